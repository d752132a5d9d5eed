"""Generated hospital-like exports (tests, benchmarks, demos), written by the libraries hospitals' systems use.

pydicom writes DICOM (12-bit data in 16-bit words, rescale slope and intercept, nested
patient/study folders), nibabel writes NIfTI, PIL writes PNG; a manifest (CSV or JSON datalist)
lists them. The label is visible in the pixels (a bright blob), so that a model can learn it.
Nothing here is read by a run: runs read such exports through :mod:`.manifest` and :mod:`.readers`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = 0.0,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    instance: int = 1,
    position: float | None = None,
) -> Path:
    """A secondary-capture DICOM holding ``stored`` (uint16 words, ``bits_stored`` of them used)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.InstanceNumber = "CR", instance
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if position is not None:
        ds.ImagePositionPatient = [0.0, 0.0, float(position)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def blob_image(rng: np.random.Generator, size: int, centres: Sequence[tuple[float, float]] = ()) -> np.ndarray:
    """Noise in [0, 1] with a bright disc at each centre (fractions of the side)."""
    yy, xx = np.mgrid[:size, :size] / size
    img = rng.normal(0.3, 0.08, (size, size))
    for cy, cx in centres:
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < 0.15**2] += 0.6
    return np.clip(img, 0, 1)


def blob_volume(rng: np.random.Generator, size: int, on: bool) -> np.ndarray:
    """A noisy volume, with a bright ball in its centre when ``on``."""
    zz, yy, xx = np.mgrid[:size, :size, :size] / size
    vol = rng.normal(0.3, 0.08, (size,) * 3)
    if on:
        vol[((zz - 0.5) ** 2 + (yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.2**2] += 0.6
    return vol.astype(np.float32)


def write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> Path:
    """``rows`` as a CSV with a header row of ``columns``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def dicom_export(root: Path, n: int, size: int = 32, seed: int = 0, labels: Sequence[str] = ("normal", "pneumonia")):
    """``root/patient<i>/study1/IM<i>.dcm`` (12-bit, slope 2, intercept -1024) and ``root/manifest.csv``.

    Columns ``file`` (relative paths) and ``finding``; images of the second label carry a blob.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        rel = Path(f"patient{i:04d}") / "study1" / f"IM{i:05d}.dcm"
        img = blob_image(rng, size, [(0.5, 0.5)] if label == labels[-1] else [])
        write_dicom(root / rel, np.round(img * 4000).astype(np.uint16), slope=2.0, intercept=-1024.0)
        rows.append({"file": rel.as_posix(), "finding": label})
    return write_csv(root / "manifest.csv", rows, ["file", "finding"])


FINDINGS = {"Cardiomegaly": (0.3, 0.3), "Effusion": (0.7, 0.7)}


def multi_label_export(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """PNGs and ``root/labels.csv`` with ``finding`` = "Cardiomegaly|Effusion", one of them, or empty."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        present = [name for name in FINDINGS if rng.random() < 0.45]
        img = blob_image(rng, size, [FINDINGS[name] for name in present])
        rel = f"png/img{i:04d}.png"
        (root / "png").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / rel)
        rows.append({"file": rel, "finding": "|".join(present)})
    return write_csv(root / "labels.csv", rows, ["file", "finding"])


def nifti_export(root: Path, n: int, size: int = 16, seed: int = 0) -> Path:
    """NIfTI volumes ``root/vol/case<i>.nii.gz`` and ``root/volumes.csv`` with integer labels 0/1."""
    import nibabel

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rel = f"vol/case{i:03d}.nii.gz"
        (root / "vol").mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(blob_volume(rng, size, bool(label)), np.eye(4)), root / rel)
        rows.append({"file": rel, "finding": label})
    return write_csv(root / "volumes.csv", rows, ["file", "finding"])


def png_datalist(root: Path, n: int, size: int = 24, seed: int = 0, test: int = 0) -> Path:
    """PNGs listed in a MONAI/Decathlon datalist ``root/dataset.json`` (keys ``image``, ``label``: 0/1)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n + test):
        label = i % 2
        rel = f"imagesTr/{i:04d}.png"
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(blob_image(rng, size, [(0.5, 0.5)] if label else []) * 255).astype(np.uint8)).save(
            root / rel
        )
        entries.append({"image": rel, "label": label})
    path = root / "dataset.json"
    path.write_text(json.dumps({"name": "test", "training": entries[:n], "test": entries[n:]}))
    return path
