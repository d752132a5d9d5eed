"""Image data sets: MedMNIST .npz files, a hospital's folder export, or synthetic images.

Every loader returns :class:`Splits`: uint8 images shaped (N, C, H, W), integer labels, and the
held-out test split. Turning them into tensors (normalisation, augmentation) is
:class:`ImageDataset`'s job, so that all modes share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from pipeline.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Splits:
    """Training images (to be divided among hospitals) and the held-out test split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def load_splits(data: DictConfig, seed: int) -> Splits:
    """Load the data set ``data`` describes (see conf/data/); raise DataError with a fix if missing."""
    if data.kind == "medmnist":
        splits = _load_medmnist(data)
    elif data.kind == "folder":
        splits = _load_folder(data, seed)
    elif data.kind == "synthetic":
        splits = make_synthetic(data.num_samples, data.num_classes, data.image_size, data.channels, seed)
    else:
        raise ConfigError(f"data.kind={data.kind!r} is unknown; use medmnist, folder or synthetic")
    if data.limit:
        splits = _limit(splits, int(data.limit), seed)
    present = np.unique(splits.train_y)
    if present.size < 2:
        raise DataError(
            f"the training data holds a single class ({splits.class_names[int(present[0])]!r}); "
            "a classifier needs at least two"
        )
    return splits


@dataclass
class SiteImages:
    """One hospital's own images (deployment): training, and validation when its file holds one."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None
    val_y: np.ndarray | None
    class_names: list[str]


def load_site(data: DictConfig) -> SiteImages:
    """A hospital's own data at ``data.root``, taken whole (nothing is partitioned).

    ``medmnist``: ``<root>/<flag>.npz`` in MedMNIST's layout; its ``train`` arrays are the
    hospital's training images and its ``val`` arrays (if present and non-empty) its validation
    images. ``folder``: ``<root>/<class>/*.png``, all of it for training. The test arrays of a
    MedMNIST file are not read: testing happens away from the hospitals.

    Raises:
        DataError: the file or folder is missing or holds one class only.
        ConfigError: ``data.kind`` has no hospital-held form (synthetic).
    """
    if data.kind == "medmnist":
        info = _medmnist_info(data.flag)
        path = medmnist_path(data)
        if not path.exists():
            raise DataError(f"{path} not found: this hospital's data-root must hold its own {path.name}")
        with np.load(path) as npz:
            if "train_images" not in npz or "train_labels" not in npz:
                raise DataError(f"{path} has no train_images/train_labels arrays (MedMNIST layout expected)")
            train_x, train_y = _to_nchw(npz["train_images"]), npz["train_labels"].reshape(-1).astype(np.int64)
            val_x = val_y = None
            if "val_images" in npz and len(npz["val_images"]):
                val_x, val_y = _to_nchw(npz["val_images"]), npz["val_labels"].reshape(-1).astype(np.int64)
        names = [info["label"][k] for k in sorted(info["label"], key=int)]
        site = SiteImages(train_x, train_y, val_x, val_y, names)
    elif data.kind == "folder":
        x, y, classes = _read_class_folders(Path(str(data.root)).expanduser(), int(data.image_size), int(data.channels))
        site = SiteImages(x, y, None, None, classes)
    else:
        raise ConfigError(f"data.kind={data.kind!r} has no hospital-held form; deployments use medmnist or folder data")
    present = np.unique(site.train_y)
    if present.size < 2:
        raise DataError(
            f"the hospital's training data at {data.root} holds a single class "
            f"({site.class_names[int(present[0])]!r}); a classifier needs at least two"
        )
    return site


def save_medmnist_layout(path: Path, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> None:
    """Write (N, C, H, W) uint8 images and labels as a MedMNIST-layout .npz (empty test split)."""

    def layout(x: np.ndarray) -> np.ndarray:
        return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)

    empty = layout(train[0][:0])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        train_images=layout(train[0]),
        train_labels=train[1].reshape(-1, 1).astype(np.uint8),
        val_images=layout(val[0]),
        val_labels=val[1].reshape(-1, 1).astype(np.uint8),
        test_images=empty,
        test_labels=np.zeros((0, 1), np.uint8),
    )


def _medmnist_info(flag: str) -> dict:
    import medmnist

    info = medmnist.INFO.get(flag)
    flags_2d = sorted(k for k, v in medmnist.INFO.items() if not k.endswith("3d"))
    if info is None or flag.endswith("3d"):
        raise ConfigError(f"data.flag={flag!r} is not a 2D MedMNIST data set; use one of {flags_2d}")
    if info["task"].startswith("multi-label"):
        raise ConfigError(f"data.flag={flag!r} is multi-label; this pipeline trains single-label classifiers")
    return info


def medmnist_path(data: DictConfig) -> Path:
    """Where the MedMNIST file for ``data.flag`` at ``data.size`` is expected."""
    name = data.flag if int(data.size) == 28 else f"{data.flag}_{int(data.size)}"
    return Path(str(data.root)).expanduser() / f"{name}.npz"


def _load_medmnist(data: DictConfig) -> Splits:
    info = _medmnist_info(data.flag)
    path = medmnist_path(data)
    if not path.exists():
        if not data.download:
            raise DataError(
                f"{path} not found: set data.root to the folder holding {path.name}, or add data.download=true "
                "to fetch it with the medmnist package"
            )
        _download_medmnist(data, info, path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    names = [info["label"][k] for k in sorted(info["label"], key=int)]
    return Splits(
        train_x=_to_nchw(arrays["train_images"]),
        train_y=arrays["train_labels"].reshape(-1).astype(np.int64),
        test_x=_to_nchw(arrays["test_images"]),
        test_y=arrays["test_labels"].reshape(-1).astype(np.int64),
        class_names=names,
    )


def _download_medmnist(data: DictConfig, info: dict, path: Path) -> None:
    import medmnist

    path.parent.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, info["python_class"])
    try:
        cls(split="train", root=str(path.parent), download=True, size=int(data.size))
    except Exception as err:  # network errors come in many types
        raise DataError(
            f"downloading {data.flag} into {path.parent} failed ({err}); copy the file there instead"
        ) from None
    if not path.exists():
        raise DataError(f"the medmnist download did not produce {path}")


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) uint8."""
    if images.ndim == 3:
        return images[:, None, :, :]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _read_class_folders(root: Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; it must hold one sub-folder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"data folder {root} has {len(classes)} class sub-folder(s) {classes}; a classifier needs at least two"
        )
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            with Image.open(f) as img:
                arr = np.asarray(img.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)
            images.append(arr)
            labels.append(label)
    return _to_nchw(np.stack(images)), np.asarray(labels, dtype=np.int64), classes


def _load_folder(data: DictConfig, seed: int) -> Splits:
    root = Path(str(data.root)).expanduser()
    x, y, classes = _read_class_folders(root, int(data.image_size), int(data.channels))
    if data.test_root:
        tx, ty, test_classes = _read_class_folders(
            Path(str(data.test_root)).expanduser(), int(data.image_size), int(data.channels)
        )
        if test_classes != classes:
            raise DataError(f"data.test_root classes {test_classes} differ from data.root classes {classes}")
        return Splits(x, y, tx, ty, classes)
    train_idx, test_idx = stratified_split(y, float(data.test_fraction), seed)
    return Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(len(labels))`` keeping ``fraction`` of every class in the second part."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(len(idx) * fraction))
        if len(idx) > 1:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def make_synthetic(num_samples: int, num_classes: int, size: int, channels: int, seed: int) -> Splits:
    """Noisy images whose class sets the brightness of a centred disc: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    total = int(num_samples) + max(int(num_samples) // 4, num_classes)
    labels = np.arange(total) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    level = 60 + 140 * labels / max(num_classes - 1, 1)
    images = rng.normal(90, 30, size=(total, channels, size, size))
    images += disc[None, None] * (level[:, None, None, None] - 90)
    images = np.clip(images, 0, 255).astype(np.uint8)
    n = int(num_samples)
    names = [f"class_{c}" for c in range(num_classes)]
    return Splits(images[:n], labels[:n].astype(np.int64), images[n:], labels[n:].astype(np.int64), names)


def _limit(s: Splits, limit: int, seed: int) -> Splits:
    rng = np.random.default_rng(seed)

    def pick(n: int) -> np.ndarray:
        return np.sort(rng.permutation(n)[: min(limit, n)])

    tr, te = pick(len(s.train_y)), pick(len(s.test_y))
    return Splits(s.train_x[tr], s.train_y[tr], s.test_x[te], s.test_y[te], s.class_names)


class ImageDataset(Dataset):
    """uint8 (N, C, H, W) images -> normalised float tensors, with optional light augmentation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float, augment: bool = False):
        self.x = (torch.from_numpy(images).float() / 255.0 - mean) / std
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.augment = None
        if augment:
            from torchvision.transforms import v2

            self.augment = v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.y[i]
