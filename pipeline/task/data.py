"""Image data sets: MedMNIST .npz files, synthetic images, and hospital exports read from files.

Every loader returns :class:`Splits`: the training images (to be divided among hospitals), their
labels, and the held-out test split. In-memory data (MedMNIST, synthetic) are uint8 arrays
shaped (N, C, H, W); hospital exports (``data=folder``: class folders, ``data=manifest``: a CSV or
JSON datalist) are :class:`FileImages`, the paths of files read lazily when a batch needs them,
so that only labels and paths are held (no pixels) while the data are divided among hospitals.
Labels are class indices (N,), or multi-hot rows (N, classes) for multi-label data.

Turning images into tensors is the datasets' job: :class:`ImageDataset` normalises in-memory
arrays, :class:`FileDataset` reads files through MONAI (:mod:`.readers`, :mod:`.transforms`)
with MONAI's PersistentDataset or CacheDataset as ``data.cache`` says; both apply the configured
augmentation. :func:`make_dataset` picks the one the images need.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from pipeline.errors import ConfigError, DataError
from pipeline.reporting.atomic import write_atomic
from pipeline.task.manifest import (
    TEST_KEY,
    TRAINING_KEY,
    Rows,
    class_folder_rows,
    class_list,
    encode_labels,
    read_manifest,
)
from pipeline.task.readers import scan
from pipeline.task.transforms import augmentation, no_metadata, preprocessing, preprocessing_key

log = logging.getLogger(__name__)

FILE_KINDS = ("folder", "manifest")
# Images shrunk by more than this factor (median side / data.image_size) earn a warning.
SHRINK_WARNING = 4
# Unreadable files named in a message (the count says how many there are).
NAMED_BAD_FILES = 3


@dataclass(frozen=True)
class FileImages:
    """Image files read lazily: for hospital exports what a (N, C, *spatial) uint8 array is for the rest.

    ``shape`` is the shape of the stacked tensors once read and preprocessed; indexing with an
    index array gives the files at those positions.
    """

    paths: np.ndarray
    stamps: np.ndarray
    channels: int
    image_size: int
    spatial_dims: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), self.channels, *(self.image_size,) * self.spatial_dims)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> FileImages:
        return FileImages(self.paths[index], self.stamps[index], self.channels, self.image_size, self.spatial_dims)


Images = np.ndarray | FileImages


@dataclass
class Splits:
    """Training images (to be divided among hospitals) and the held-out test split."""

    train_x: Images
    train_y: np.ndarray
    test_x: Images
    test_y: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier: classes, or findings for multi-label data."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def spatial_dims(self) -> int:
        return len(self.train_x.shape) - 2

    @property
    def multi_label(self) -> bool:
        return self.train_y.ndim == 2


def load_splits(data: DictConfig, seed: int) -> Splits:
    """Load the data set ``data`` describes (see conf/data/); raise DataError with a fix if missing."""
    if data.kind == "medmnist":
        splits = _load_medmnist(data)
    elif data.kind in FILE_KINDS:
        splits = _load_files(data, seed)
    elif data.kind == "synthetic":
        splits = make_synthetic(data.num_samples, data.num_classes, data.image_size, data.channels, seed)
    else:
        raise ConfigError(f"data.kind={data.kind!r} is unknown; use medmnist, folder, manifest or synthetic")
    if data.limit:
        splits = _limit(splits, int(data.limit), seed)
    _check_learnable(splits.train_y, splits.class_names, "the training data")
    return splits


def _check_learnable(labels: np.ndarray, names: list[str], what: str) -> None:
    """Refuse labels a classifier cannot learn from: one class only, or no finding that varies."""
    if labels.ndim == 2:
        varies = (labels.min(axis=0) != labels.max(axis=0)) if len(labels) else np.zeros(labels.shape[1], bool)
        if not varies.any():
            raise DataError(f"in {what} no finding of {names} is present in some images and absent in others")
        return
    present = np.unique(labels)
    if present.size < 2:
        held = f"({names[int(present[0])]!r})" if present.size else "(no images)"
        raise DataError(f"{what} holds a single class {held}; a classifier needs at least two")


@dataclass
class SiteImages:
    """One hospital's own images (deployment): training, and validation when its file holds one."""

    train_x: Images
    train_y: np.ndarray
    val_x: Images | None
    val_y: np.ndarray | None
    class_names: list[str]


def load_site(data: DictConfig) -> SiteImages:
    """A hospital's own data at ``data.root``, taken whole (nothing is partitioned).

    ``medmnist``: ``<root>/<flag>.npz`` in MedMNIST's layout; its ``train`` arrays are the
    hospital's training images and its ``val`` arrays (if present and non-empty) its validation
    images. ``folder``: ``<root>/<class>/**/<image>``, all of it for training. ``manifest``: the
    manifest at ``<root>`` (a file), or ``<root>/<name of data.manifest>``, all of it for training;
    ``data.classes`` must be set so that every hospital orders the classes alike. The test
    arrays of a MedMNIST file are not read: testing happens away from the hospitals.

    Raises:
        DataError: the file or folder is missing or holds one class only.
        ConfigError: ``data.kind`` has no hospital-held form (synthetic), or a manifest without
            ``data.classes``.
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
    elif data.kind in FILE_KINDS:
        if data.kind == "manifest" and not data.get("classes"):
            raise ConfigError(
                "a hospital's own manifest needs data.classes (e.g. data.classes=[normal,pneumonia]): "
                "every hospital must order the classes alike"
            )
        if data.kind == "folder":
            rows = class_folder_rows(Path(str(data.root)).expanduser())
        else:
            rows = _manifest_rows(data, site_manifest(data), TRAINING_KEY)
        names = class_list(rows, data.get("classes"), _multi_label(data), _separator(data))
        x, y, _ = _file_table(data, rows, names, None)
        site = SiteImages(x, y, None, None, names)
    else:
        raise ConfigError(
            f"data.kind={data.kind!r} has no hospital-held form; deployments use medmnist, folder or manifest data"
        )
    _check_learnable(site.train_y, site.class_names, f"the hospital's training data at {data.root}")
    return site


def site_manifest(data: DictConfig) -> Path:
    """The manifest of a hospital's data-root: ``data.root`` itself, or the file named like data.manifest in it."""
    root = Path(str(data.root)).expanduser()
    if root.is_file():
        return root
    if not data.get("manifest"):
        raise ConfigError("data.manifest must name the manifest file a hospital's data-root holds")
    return root / Path(str(data.manifest)).name


def save_medmnist_layout(path: Path, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> None:
    """Write (N, C, H, W) uint8 images and labels as a MedMNIST-layout .npz (empty test split)."""

    def layout(x: np.ndarray) -> np.ndarray:
        return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)

    empty = layout(train[0][:0])
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        train_images=layout(train[0]),
        train_labels=train[1].reshape(-1, 1).astype(np.uint8),
        val_images=layout(val[0]),
        val_labels=val[1].reshape(-1, 1).astype(np.uint8),
        test_images=empty,
        test_labels=np.zeros((0, 1), np.uint8),
    )
    write_atomic(path, buf.getvalue())  # a crash leaves the previous file or none, never half of one


def _medmnist_info(flag: str) -> dict:
    import medmnist

    info = medmnist.INFO.get(flag)
    flags_2d = sorted(k for k, v in medmnist.INFO.items() if not k.endswith("3d"))
    if info is None or flag.endswith("3d"):
        raise ConfigError(f"data.flag={flag!r} is not a 2D MedMNIST data set; use one of {flags_2d}")
    if info["task"].startswith("multi-label"):
        raise ConfigError(
            f"data.flag={flag!r} is multi-label; MedMNIST files load single-label here: list its images in a "
            "manifest with data=manifest data.multi_label=true"
        )
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


def _multi_label(data: DictConfig) -> bool:
    return bool(data.get("multi_label"))


def _separator(data: DictConfig) -> str:
    return str(data.get("label_separator") or "|")


def _manifest_rows(data: DictConfig, path: Path, part: str) -> Rows | None:
    return read_manifest(path, str(data.image_column), str(data.label_column), part)


def _test_rows(data: DictConfig) -> Rows | None:
    """The held-out test entries: data.test_root / data.test_manifest, or a datalist's own ``test`` entries."""
    if data.kind == "folder":
        return class_folder_rows(Path(str(data.test_root)).expanduser()) if data.get("test_root") else None
    if data.get("test_manifest"):
        path = Path(str(data.test_manifest)).expanduser()
        return _manifest_rows(data, path, TEST_KEY) or _manifest_rows(data, path, TRAINING_KEY)
    return _manifest_rows(data, Path(str(data.manifest)).expanduser(), TEST_KEY)


def _file_table(
    data: DictConfig, rows: Rows, classes: list[str], test: Rows | None
) -> tuple[FileImages, np.ndarray, tuple[FileImages, np.ndarray] | None]:
    """Labels checked, then every file's header: the readable images and labels of ``rows`` (and ``test``).

    Raises:
        DataError: a label outside ``classes``; unreadable files unless ``data.on_bad_file=skip``
            (one line naming the first of them and how many there are).
    """
    multi, sep = _multi_label(data), _separator(data)
    parts = [(rows, encode_labels(rows, classes, multi, sep))]
    if test is not None:
        parts.append((test, encode_labels(test, classes, multi, sep)))
    dims = int(data.spatial_dims)
    scanned = [scan(r.paths, dims) for r, _ in parts]
    bad = [b for _, found in scanned for b in found]
    if bad:
        total = sum(len(r) for r, _ in parts)
        named = ", ".join(f"{p} ({why})" for p, why in bad[:NAMED_BAD_FILES])
        more = f" and {len(bad) - NAMED_BAD_FILES} more" if len(bad) > NAMED_BAD_FILES else ""
        if str(data.get("on_bad_file") or "refuse") != "skip":
            raise DataError(
                f"{len(bad)} of {total} image files cannot be used: {named}{more}; fix or remove them, "
                "or set data.on_bad_file=skip to leave them out"
            )
        log.warning(
            "data.on_bad_file=skip: left out %d of %d image files: %s",
            len(bad),
            total,
            "; ".join(f"{p} ({why})" for p, why in bad),
        )
    headers = [h for hs, _ in scanned for h in hs if h is not None]
    _warn_if_shrunk(headers, int(data.image_size))
    out = []
    for (r, labels), (hs, _) in zip(parts, scanned, strict=True):
        keep = np.flatnonzero([h is not None for h in hs])
        images = FileImages(
            np.asarray(r.paths, dtype=object)[keep],
            np.asarray([hs[i].stamp for i in keep], dtype=object),
            int(data.channels),
            int(data.image_size),
            dims,
        )
        out.append((images, labels[keep]))
    return out[0][0], out[0][1], (out[1] if test is not None else None)


def _warn_if_shrunk(headers: list, size: int) -> None:
    sides = [max(h.spatial() or (1,)) for h in headers]
    if not sides:
        return
    side = int(np.median(sides))
    if side > SHRINK_WARNING * size:
        log.warning(
            "images of typically %d px are shrunk %.0fx to data.image_size=%d: details smaller than %.0f px vanish; "
            "raise data.image_size if the findings are small",
            side,
            side / size,
            size,
            side / size,
        )


def _load_files(data: DictConfig, seed: int) -> Splits:
    """A hospital export (class folders or a manifest): labels and paths, every header checked, no pixels."""
    multi = _multi_label(data)
    if data.kind == "folder":
        rows = class_folder_rows(Path(str(data.root)).expanduser())
    else:
        rows = _manifest_rows(data, Path(str(data.manifest)).expanduser(), TRAINING_KEY)
    test = _test_rows(data)
    classes = class_list(rows, data.get("classes"), multi, _separator(data))
    if data.kind == "folder" and test is not None and not data.get("classes"):
        test_classes = sorted(set(test.labels))
        if test_classes != classes:
            raise DataError(f"data.test_root classes {test_classes} differ from data.root classes {classes}")
    x, y, held = _file_table(data, rows, classes, test)
    if held is not None:
        return Splits(x, y, held[0], held[1], classes)
    train_idx, test_idx = stratified_split(y, float(data.test_fraction), seed)
    return Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes)


def label_strata(labels: np.ndarray) -> np.ndarray:
    """One integer per image to stratify and partition by (what flwr-datasets' partitioners see).

    Single-label data: the label. Multi-label data: the image's rarest finding, or the number of
    findings for an image with none, so that rare findings reach every part.
    """
    if labels.ndim == 1:
        return labels
    counts = labels.sum(axis=0)
    rarity = np.where(labels > 0, counts[None, :], np.inf)
    strata = rarity.argmin(axis=1)
    strata[labels.sum(axis=1) == 0] = labels.shape[1]
    return strata.astype(np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(len(labels))`` keeping ``fraction`` of every class in the second part.

    Multi-label data are stratified by :func:`label_strata`.
    """
    labels = label_strata(labels)
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


class AugmentedViews(Dataset):
    """``views`` augmented copies of each item of ``dataset``, stacked: ``(x [views, ...], y)``.

    Augmentation multiplicity (De et al. 2022, ``train.augmentation_multiplicity``): each access
    of ``dataset[i]`` draws a fresh augmentation, so the views differ; training flattens them into
    consecutive rows and DP-SGD clips their mean gradient as one sample's.
    """

    def __init__(self, dataset: Dataset, views: int) -> None:
        if views < 1:
            raise ValueError(f"views={views} must be >= 1")
        self.dataset = dataset
        self.views = int(views)
        self.augment = getattr(dataset, "augment", None)
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[i] for _ in range(self.views)]
        return torch.stack([x for x, _ in items]), items[0][1]


def seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Seed ``dataset``'s augmentation (if it has one): a round's draws follow the round's seed."""
    augment = getattr(dataset, "augment", None)
    if augment is not None:
        augment.set_random_state(seed)


def _label_tensor(labels: np.ndarray) -> torch.Tensor:
    """Class indices as int64, multi-hot rows as float32 (what the losses take)."""
    labels = np.asarray(labels)
    return torch.from_numpy(labels.astype(np.float32 if labels.ndim == 2 else np.int64))


class ImageDataset(Dataset):
    """uint8 (N, C, H, W) images -> normalised float tensors, with optional augmentation.

    ``augment``: ``data.augment``'s value (true: the light random affine; a list: MONAI transforms).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: float,
        std: float,
        augment: Any = False,
        class_names: list[str] | None = None,
    ):
        self.x = (torch.from_numpy(images).float() / 255.0 - mean) / std
        self.y = _label_tensor(labels)
        self.class_names = class_names
        self.augment = augmentation(augment, images.ndim - 2)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.y[i]


def _private_folder(path: Path) -> Path:
    """``path`` created readable by its owner only (cached tensors are patients' images)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


class FileDataset(Dataset):
    """Image files read when an item is asked for, preprocessed by MONAI, cached as ``data.cache`` says.

    ``none``: read on every access. ``persistent``: MONAI's PersistentDataset keeps each
    preprocessed tensor in ``data.cache_dir/<settings hash>/`` (owner-only), shared by runs and
    processes with the same preprocessing; a changed file is read again. ``memory``: MONAI's
    CacheDataset keeps up to ``data.cache_memory`` MiB of this data set in memory, filled as items
    are first read. Memory stays bounded in every mode: the data set holds paths and labels.
    """

    def __init__(
        self,
        images: FileImages,
        labels: np.ndarray,
        data: DictConfig,
        augment: Any = False,
        class_names: list[str] | None = None,
    ):
        from monai.data import CacheDataset, PersistentDataset
        from monai.data import Dataset as MonaiDataset

        items = [{"image": p, "source": p, "stamp": t} for p, t in zip(images.paths, images.stamps, strict=True)]
        transform = preprocessing(data)
        mode = str(data.cache)
        if mode == "persistent":
            folder = _private_folder(Path(str(data.cache_dir)).expanduser()) / preprocessing_key(data)
            self.images = PersistentDataset(items, transform, cache_dir=_private_folder(folder))
        elif mode == "memory":
            per_item = 4 * int(np.prod(images.shape[1:]))
            budget = int(float(data.cache_memory) * 2**20) // per_item
            self.images = CacheDataset(
                items, transform, cache_num=budget, runtime_cache=True, copy_cache=False, progress=False
            )
        else:
            self.images = MonaiDataset(items, transform)
        self.paths = images.paths
        self.y = _label_tensor(labels)
        self.class_names = class_names
        self.augment = augmentation(augment, images.spatial_dims)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with no_metadata():
                x = self.images[i]["image"]
        except Exception as err:  # MONAI wraps a reader's error in RuntimeErrors of its own
            cause = _root_cause(err)
            raise DataError(f"{self.paths[i]} cannot be read: {type(cause).__name__}: {cause}") from None
        if self.augment is not None:
            x = self.augment(x)
        return x, self.y[i]


def make_dataset(
    data: DictConfig, images: Images, labels: np.ndarray, augment: bool = False, class_names: list[str] | None = None
) -> Dataset:
    """The dataset ``images`` need: :class:`FileDataset` for files, :class:`ImageDataset` for arrays.

    ``augment``: whether ``data.augment`` applies (training sets only).
    """
    spec = data.augment if augment else False
    if isinstance(images, FileImages):
        return FileDataset(images, labels, data, spec, class_names)
    return ImageDataset(images, labels, float(data.mean), float(data.std), spec, class_names)
