"""Which image files a data set holds and their labels, read without touching a pixel.

Sources: a manifest (a CSV with a header row, or a JSON datalist: a list of entries, or MONAI /
Decathlon style ``{"training": [...], "test": [...]}``) naming each image (``data.image_column``:
a path relative to the manifest's folder, or absolute; a folder is a DICOM series) and its label
(``data.label_column``); or class folders (``root/<class>/**/<image>``).

Labels (:func:`encode_labels`): strings or integers; ``data.classes`` fixes the class list and
its order (default: the sorted distinct labels, numerically when all are integers). Multi-label:
each label cell lists findings joined by ``data.label_separator``; an empty cell means no finding.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.task.readers import image_format

# Keys of a JSON datalist that hold the training entries and the held-out test entries.
TRAINING_KEY, TEST_KEY = "training", "test"


@dataclass
class Rows:
    """The entries of one source: image paths, raw labels, and where each entry came from (for messages)."""

    paths: list[str]
    labels: list[str]
    where: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: Sequence[int]) -> Rows:
        """The entries at ``keep``, in that order."""
        return Rows([self.paths[i] for i in keep], [self.labels[i] for i in keep], [self.where[i] for i in keep])


def _label_text(value: object) -> str:
    """A label cell as text: integers stay integers (JSON 1 and 1.0 and CSV "1" are the same label)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        raise TypeError("a list")
    return str(value).strip()


def _resolve(base: Path, value: object) -> str:
    path = Path(str(value).strip()).expanduser()
    return str(path if path.is_absolute() else base / path)


def _columns_error(path: Path, missing: str, key: str, columns: Sequence[str]) -> DataError:
    return DataError(
        f"{path} has no column {missing!r} (data.{key}); its columns are {', '.join(map(repr, columns)) or 'none'}"
    )


def _csv_rows(path: Path, image_column: str, label_column: str) -> Rows:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        for col, key in ((image_column, "image_column"), (label_column, "label_column")):
            if col not in columns:
                raise _columns_error(path, col, key, columns)
        rows = Rows([], [], [])
        for record in reader:
            where = f"{path} line {reader.line_num}"
            image = (record.get(image_column) or "").strip()
            if not image:
                raise DataError(f"{where}: empty {image_column!r} (every row names an image file)")
            rows.paths.append(_resolve(path.parent, image))
            rows.labels.append(_label_text(record.get(label_column)))
            rows.where.append(where)
    return rows


def _json_entries(path: Path, part: str) -> list | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable JSON datalist ({err})") from None
    if isinstance(content, list):
        return content if part == TRAINING_KEY else None
    if isinstance(content, dict) and isinstance(content.get(TRAINING_KEY), list):
        return content.get(part)
    raise DataError(f"{path}: a JSON datalist is a list of entries or an object with a {TRAINING_KEY!r} list")


def _json_rows(path: Path, entries: list, image_column: str, label_column: str, key: str) -> Rows:
    rows = Rows([], [], [])
    for i, entry in enumerate(entries):
        where = f"{path} {key}[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is {entry!r}; each entry is an object with {image_column!r} and {label_column!r}")
        for col, name in ((image_column, "image_column"), (label_column, "label_column")):
            if col not in entry:
                raise _columns_error(path, col, name, list(entry))
        try:
            label = _label_text(entry[label_column])
        except TypeError:
            label = None
        if label is None or not str(entry[image_column]).strip():
            raise DataError(f"{where}: {image_column!r} must name a file and {label_column!r} be one label")
        rows.paths.append(_resolve(path.parent, entry[image_column]))
        rows.labels.append(label)
        rows.where.append(where)
    return rows


def read_manifest(path: Path, image_column: str, label_column: str, part: str = TRAINING_KEY) -> Rows | None:
    """The entries of the manifest at ``path`` (CSV or JSON datalist).

    ``part``: ``training`` (a CSV, a JSON list, or a datalist's ``training`` entries) or ``test``
    (a datalist's ``test`` entries; None when it has none, or they carry no labels).

    Raises:
        DataError: the file is missing or unreadable, a column is missing (the message lists the
            columns there are), or an entry names no image.
    """
    if not path.is_file():
        raise DataError(f"manifest {path} not found; data.manifest must name a CSV or JSON datalist file")
    if path.suffix.lower() == ".json":
        entries = _json_entries(path, part)
        if part == TEST_KEY and (not entries or not all(isinstance(e, dict) and label_column in e for e in entries)):
            return None
        return _json_rows(path, entries or [], image_column, label_column, part)
    if part == TEST_KEY:
        return None
    try:
        return _csv_rows(path, image_column, label_column)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a UTF-8 CSV file ({err.reason})") from None
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV file ({err})") from None


def class_folder_rows(root: Path) -> Rows:
    """Every image below ``root/<class>/`` (nested folders included), labelled by its class folder.

    Raises:
        DataError: ``root`` is missing, has fewer than two class folders, or one holds no images.
    """
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; it must hold one sub-folder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"data folder {root} has {len(classes)} class sub-folder(s) {classes}; a classifier needs at least two"
        )
    rows = Rows([], [], [])
    for name in classes:
        files = sorted(
            f for f in (root / name).rglob("*") if f.is_file() and not f.name.startswith(".") and image_format(f)
        )
        if not files:
            raise DataError(f"class folder {root / name} holds no images (DICOM, NIfTI, PNG, JPEG, BMP or TIFF)")
        rows.paths.extend(str(f) for f in files)
        rows.labels.extend([name] * len(files))
        rows.where.extend(str(f) for f in files)
    return rows


def _split(label: str, multi_label: bool, separator: str) -> list[str]:
    if not multi_label:
        return [label]
    return [part.strip() for part in label.split(separator) if part.strip()] if label else []


def _natural(names: set[str]) -> list[str]:
    """Sorted; numerically when every name is an integer (2 before 10)."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def class_list(rows: Rows, classes: Sequence[str] | None, multi_label: bool, separator: str) -> list[str]:
    """``data.classes`` as text, or the sorted distinct labels of ``rows``."""
    if classes:
        return [_label_text(c) for c in classes]
    found = {name for label in rows.labels for name in _split(label, multi_label, separator)}
    return _natural(found)


def encode_labels(rows: Rows, classes: Sequence[str], multi_label: bool, separator: str) -> np.ndarray:
    """Class indices (N,) int64, or multi-hot (N, len(classes)) float32 for multi-label data.

    Raises:
        DataError: a label outside ``classes`` (naming the row and the value), or an empty label
            in single-label data.
    """
    index = {name: i for i, name in enumerate(classes)}
    shown = ", ".join(classes)
    if multi_label:
        out = np.zeros((len(rows), len(classes)), dtype=np.float32)
    else:
        out = np.zeros(len(rows), dtype=np.int64)
    for r, (label, where) in enumerate(zip(rows.labels, rows.where, strict=True)):
        names = _split(label, multi_label, separator)
        if not multi_label and not label:
            raise DataError(f"{where}: empty label; every image needs one of {shown} (or set data.multi_label=true)")
        for name in names:
            if name not in index:
                raise DataError(f"{where}: label {name!r} is not in data.classes [{shown}]")
            if multi_label:
                out[r, index[name]] = 1.0
            else:
                out[r] = index[name]
    return out
