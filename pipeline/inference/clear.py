"""Clear (plaintext) inference: a run's final model, the images to predict, and their logits.

:func:`load_run` rebuilds the run's network from ``config.yaml`` with
:func:`pipeline.task.model.build_model` and loads its final weights (``model.pt``).
:func:`read_inputs` collects image files, folders and manifest CSVs, :func:`read_split` a split of
the run's own data set; :func:`input_tensors` turns them into the model's input exactly as the
run's data pipeline did (:func:`pipeline.task.data.make_dataset`, augmentation off):

* a run on image files (``data.kind`` folder or manifest) reads every image through its MONAI
  preprocessing (DICOM, NIfTI, PNG/JPEG...; channel layout, resize to ``data.image_size``,
  ``data.intensity``, mean/std), so any size is taken as training took it;
* a run on in-memory arrays (MedMNIST, synthetic) never read files: an image is taken as the
  8-bit pixels a MedMNIST array holds (PNG/JPEG/BMP/TIFF read by PIL, then ``/255`` and the run's
  mean/std). It must already have the run's size and channel count: it is refused otherwise
  (:class:`~pipeline.errors.DataError`), since that pipeline never resized or converted.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.errors import ConfigError, DataError
from pipeline.reporting.recorder import CONFIG_FILE, MODEL_FILE
from pipeline.task.data import FILE_KINDS, FileImages, Images, load_splits, make_dataset
from pipeline.task.readers import PIL_SUFFIXES, image_format, scan

INFERENCE_DIR = "inference"
SPLITS = ("test", "train")
UNKNOWN = -1  # label of an image whose class is not known


@dataclass
class RunModel:
    """A finished run's final network (eval mode) with the data shape and classes it was trained on."""

    run_dir: Path
    cfg: DictConfig
    model: nn.Module
    channels: int
    image_size: int
    class_names: list[str]

    @property
    def reads_files(self) -> bool:
        """Whether the run's data pipeline read image files (else it held uint8 arrays)."""
        return self.cfg.data.kind in FILE_KINDS


def run_classes(cfg: DictConfig) -> list[str]:
    """The class names of the run's data set, in label order.

    MedMNIST: the flag's labels; synthetic: ``class_<i>``; image files: ``data.classes`` when set,
    else the data set's own (its labels are read, no pixels).
    """
    data = cfg.data
    if data.kind == "medmnist":
        import medmnist

        labels = medmnist.INFO[str(data.flag)]["label"]
        return [labels[k] for k in sorted(labels, key=int)]
    if data.kind == "synthetic":
        return [f"class_{c}" for c in range(int(data.num_classes))]
    if data.get("classes"):
        return [str(c) for c in data.classes]
    return load_splits(data, int(cfg.seed)).class_names


def load_run(run_dir: str | Path, data_root: str | None = None) -> RunModel:
    """The run's final model, built from its ``config.yaml`` and loaded from ``model.pt``.

    Args:
        run_dir: a finished run folder.
        data_root: replaces the run's ``data.root`` (relative roots name where the run started).

    Raises:
        DataError: no such folder, no config.yaml or model.pt, or weights that do not fit the network.
        ConfigError: a multi-label run (this command predicts one class per image).
    """
    from pipeline.task.model import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder; give a run folder holding {CONFIG_FILE} and {MODEL_FILE}")
    for name, what in ((CONFIG_FILE, "its config"), (MODEL_FILE, "a final model: the run did not finish")):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir} has no {name} ({what}); give a finished run folder")
    try:
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
        if data_root is not None:
            cfg.data.root = str(data_root)
        if cfg.data.get("multi_label"):
            raise ConfigError(f"{run_dir} is a multi-label run; fedmed-infer predicts one class per image")
        classes = run_classes(cfg)
        size = int(cfg.data.size) if cfg.data.kind == "medmnist" else int(cfg.data.image_size)
        model = build_model(cfg, int(cfg.data.channels), len(classes), size)
    except (ConfigError, DataError):
        raise
    except Exception as err:  # YAML, missing keys, builder errors: one line
        raise DataError(f"{run_dir / CONFIG_FILE}: cannot rebuild the model ({str(err).splitlines()[0]})") from None
    try:
        model.load_state_dict(torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    except Exception as err:  # unpickling or shape errors of many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{run_dir / MODEL_FILE} does not fit the run's network ({first})") from None
    return RunModel(run_dir, cfg, model.eval(), int(cfg.data.channels), size, classes)


@dataclass
class InputImages:
    """Images to predict (uint8 arrays or files, as :class:`~pipeline.task.data.Splits` holds them).

    ``ids``: a path or a split index per image; ``labels``: class indices, ``UNKNOWN`` (-1) where unknown.
    """

    images: Images
    ids: list[str]
    id_column: str
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def known(self) -> np.ndarray:
        """Mask of the images whose label is known."""
        return self.labels != UNKNOWN

    def head(self, limit: int | None) -> InputImages:
        """The first ``limit`` images (all of them for ``None``)."""
        if limit is None:
            return self
        keep = np.arange(min(limit, len(self)))
        return replace(self, images=self.images[keep], ids=self.ids[:limit], labels=self.labels[:limit])


def _pixels(path: Path, channels: int, image_size: int) -> np.ndarray:
    """An 8-bit image file as uint8 ``(channels, size, size)`` for an array-trained run (no resizing)."""
    from PIL import Image, UnidentifiedImageError

    if not path.name.lower().endswith(PIL_SUFFIXES):
        raise DataError(
            f"{path}: this run trained on MedMNIST-style arrays; give 8-bit {'/'.join(PIL_SUFFIXES)} images"
        )
    try:
        with Image.open(path) as img:
            colours = len([b for b in img.getbands() if b != "A"])
            if img.size != (image_size, image_size) or (colours == 1) != (channels == 1):
                raise DataError(
                    f"{path} is {img.size[0]}x{img.size[1]} with {colours} channel(s); the model takes "
                    f"{image_size}x{image_size} images with {channels} channel(s)"
                )
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _label(value: str, classes: list[str], where: str) -> int:
    """A manifest label: a class name or its index; empty = unknown."""
    text = value.strip()
    if text == "":
        return UNKNOWN
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise DataError(
        f"{where}: label {value!r} is not a class of the run; use an index 0..{len(classes) - 1} or {classes}"
    )


def _folder_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Images under ``folder`` (sorted, recursive); labelled when each sits in a class-named sub-folder."""
    files = sorted(
        f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".") and image_format(f) is not None
    )
    if not files:
        raise DataError(f"folder {folder} holds no images (DICOM, NIfTI, PNG, JPEG, BMP or TIFF)")
    tops = [f.relative_to(folder).parts[0] if len(f.relative_to(folder).parts) > 1 else None for f in files]
    labelled = all(t in classes for t in tops)
    return [(f, classes.index(t) if labelled else UNKNOWN) for f, t in zip(files, tops, strict=True)]


def _manifest_files(
    path: Path, classes: list[str], image_column: str, label_column: str | None
) -> list[tuple[Path, int]]:
    """Rows of a manifest CSV: image paths (relative ones from the CSV's folder) and optional labels."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the manifest ({err})") from None
    for column, option in ((image_column, "--image-column"), (label_column, "--label-column")):
        if column is not None and column not in columns:
            raise DataError(f"manifest {path} has no column {column!r} (columns: {columns}); set {option}")
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    if label_column is None and "label" in columns:
        label_column = "label"
    out = []
    for line, row in enumerate(rows, start=2):
        image = Path((row[image_column] or "").strip())
        image = image if image.is_absolute() else path.parent / image
        label = _label(row[label_column] or "", classes, f"{path} line {line}") if label_column else UNKNOWN
        out.append((image, label))
    return out


def read_inputs(
    run: RunModel, items: Sequence[str | Path], image_column: str = "path", label_column: str | None = None
) -> InputImages:
    """Images from files, folders and manifest CSVs (``.csv``), in the order given.

    Args:
        run: the model the images are for (channels, size, classes, how its pipeline reads images).
        items: image files; folders (every image below, sorted; labelled by a class-named
            sub-folder when all are); manifests (one row per image, see ``image_column``).
        image_column: a manifest's column of image paths (relative to the manifest's folder or absolute).
        label_column: a manifest's column of labels (class names or indices; empty = unknown); by
            default ``label`` when the manifest has one.

    Raises:
        DataError: a missing path, an unreadable or (array-trained run) wrongly shaped image, a bad
            manifest or label.
    """
    entries: list[tuple[Path, int]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            entries += _folder_files(path, run.class_names)
        elif path.suffix.lower() == ".csv":
            entries += _manifest_files(path, run.class_names, image_column, label_column)
        elif path.exists():
            entries.append((path, UNKNOWN))
        else:
            raise DataError(f"{path} does not exist")
    if not entries:
        raise DataError("no images given: name image files, a folder or a manifest CSV, or use --split")
    paths = [str(p) for p, _ in entries]
    labels = np.asarray([label for _, label in entries], dtype=np.int64)
    if run.reads_files:
        images: Images = _file_images(run.cfg.data, paths)
    else:
        images = np.stack([_pixels(p, run.channels, run.image_size) for p, _ in entries])
    return InputImages(images, paths, "path", labels, "files")


def _file_images(data: DictConfig, paths: list[str]) -> FileImages:
    """``paths`` as the run's file pipeline holds them, every header checked first (as a run does)."""
    dims = int(data.get("spatial_dims") or 2)
    headers, bad = scan(paths, dims)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}")
    stamps = np.asarray([h.stamp for h in headers], dtype=object)
    return FileImages(np.asarray(paths, dtype=object), stamps, int(data.channels), int(data.image_size), dims)


def read_split(run: RunModel, split: str) -> InputImages:
    """A split of the run's own data set (its data config, ``data.limit`` included), labelled.

    ``test`` is the held-out split the run reports on (MedMNIST's official test split); ``train``
    the images the hospitals' shares were cut from.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: use one of {list(SPLITS)}")
    s = load_splits(run.cfg.data, int(run.cfg.seed))
    x, y = (s.test_x, s.test_y) if split == "test" else (s.train_x, s.train_y)
    return InputImages(x, [str(i) for i in range(len(y))], "index", np.asarray(y, dtype=np.int64), f"{split} split")


def input_tensors(run: RunModel, inputs: InputImages) -> torch.Tensor:
    """The model's float input for ``inputs``: the run's own preprocessing (no augmentation, no cache)."""
    data = OmegaConf.merge(run.cfg.data, {"cache": "none"}) if run.reads_files else run.cfg.data
    dataset = make_dataset(data, inputs.images, np.zeros(len(inputs), dtype=np.int64))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@torch.no_grad()
def predict_logits(run: RunModel, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits for preprocessed inputs ``x`` (CPU, float32)."""
    return torch.cat([run.model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
