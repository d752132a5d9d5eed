"""Reading image files through MONAI: DICOM (PydicomReader), NIfTI (NibabelReader), PNG/JPEG/TIFF (PILReader).

Owns which reader a path needs (:func:`image_format`), the header-only check of every file at the
start of a run (:func:`probe`, :func:`scan`: missing, unreadable or wrongly shaped files are found
before anything trains) and :class:`ReadImaged`, the MONAI transform that reads one image as a
float32 channel-first array.

DICOM: pydicom keeps only the ``BitsStored`` bits of each stored word (12-bit data in 16-bit
words, sign-extended when signed); :class:`DicomReader` applies ``RescaleSlope`` and
``RescaleIntercept`` and turns MONOCHROME1 images (low values white) the usual way round. A
folder is a DICOM series (one file per slice, ordered by InstanceNumber), read as one volume.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# MONAI's warning for DICOM without patient orientation tags (secondary captures, most X-ray exports):
# the affine is irrelevant to a classifier, so it is not repeated for every file.
_AFFINE_WARNING = r".*(ImageOrientationPatient|ImagePositionPatient).*"
_CODEC_WARNING = r".*nvImageCodec.*"
# Uncompressed DICOM transfer syntaxes: their pixel data has a known size (a shorter file is truncated).
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


class BadFile(Exception):
    """An image file that cannot be used; the message is the reason, short."""


def image_format(path: Path) -> str | None:
    """``dicom``, ``nifti`` or ``pil`` by the path (a folder is a DICOM series); None if none fits.

    Files without a known suffix (DICOM exports often have none, or UID-like names) are DICOM when
    they carry DICOM's preamble.
    """
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if path.is_dir():
        return "dicom"
    from pydicom.misc import is_dicom

    try:
        return "dicom" if is_dicom(path) else None
    except OSError:
        return None


@dataclass(frozen=True)
class Header:
    """What a file's header says about its image: spatial shape as stored, channels, and a stamp.

    The stamp (bytes and modification time) changes when the file does, so that a cache keyed by
    it never returns the pixels of an earlier version.
    """

    shape: tuple[int, ...]
    channels: int
    stamp: str = ""

    def spatial(self) -> tuple[int, ...]:
        """The shape without size-1 axes (a 2D image stored as a one-slice volume is 2D)."""
        return tuple(s for s in self.shape if s > 1)


def _stamp(files: Sequence[Path]) -> str:
    stats = [f.stat() for f in files]
    return f"{sum(s.st_size for s in stats)}-{max(s.st_mtime_ns for s in stats)}"


def _dicom_header(path: Path) -> Header:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise BadFile("DICOM without an image (no Rows/Columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    channels = int(ds.get("SamplesPerPixel", 1) or 1)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax in _UNCOMPRESSED:
        expected = int(ds.Rows) * int(ds.Columns) * frames * channels * ((int(ds.get("BitsAllocated", 16)) + 7) // 8)
        if path.stat().st_size < expected:
            raise BadFile(f"truncated DICOM ({path.stat().st_size} bytes, its pixels need {expected})")
    shape = (int(ds.Rows), int(ds.Columns)) if frames == 1 else (frames, int(ds.Rows), int(ds.Columns))
    return Header(shape, channels)


def probe(path: Path) -> Header:
    """The header of the image at ``path`` (pixels are not decoded), stamped.

    Raises:
        BadFile: missing, of no known format, or its header cannot be read.
    """
    if not path.exists():
        raise BadFile("not found")
    fmt = image_format(path)
    try:
        if fmt == "dicom" and path.is_dir():
            slices = sorted(f for f in path.iterdir() if f.is_file() and image_format(f) == "dicom")
            if len(slices) < 2:
                raise BadFile(f"a DICOM series folder needs 2 or more slices, it holds {len(slices)}")
            first = _dicom_header(slices[0])
            return Header((*first.shape, len(slices)), first.channels, _stamp(slices))
        if fmt == "dicom":
            return replace(_dicom_header(path), stamp=_stamp([path]))
        if fmt == "nifti":
            import nibabel

            shape = tuple(int(s) for s in nibabel.load(path).shape)
            return Header(shape[:3], shape[3] if len(shape) > 3 else 1, _stamp([path]))
        if fmt == "pil":
            from PIL import Image

            with Image.open(path) as img:
                return Header((img.height, img.width), len(img.getbands()), _stamp([path]))
    except BadFile:
        raise
    except Exception as err:  # pydicom, nibabel and PIL raise many types for broken files
        raise BadFile(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}") from None
    raise BadFile("not a DICOM, NIfTI, PNG, JPEG, BMP or TIFF image")


def check_shape(header: Header, spatial_dims: int) -> None:
    """Refuse an image whose dimensionality is not ``spatial_dims`` (BadFile with the shape)."""
    dims = header.spatial()
    if len(dims) > spatial_dims or (spatial_dims == 3 and len(dims) < 3):
        shown = "x".join(map(str, header.shape))
        raise BadFile(f"{len(dims)}D image ({shown}) but data.spatial_dims={spatial_dims}")


def scan(paths: Sequence[str], spatial_dims: int) -> tuple[list[Header | None], list[tuple[str, str]]]:
    """Probe every path: each one's header (None where unusable) and the (path, reason) of the unusable."""
    headers: list[Header | None] = []
    bad: list[tuple[str, str]] = []
    for p in paths:
        try:
            header = probe(Path(p))
            check_shape(header, spatial_dims)
        except BadFile as err:
            headers.append(None)
            bad.append((p, str(err)))
        else:
            headers.append(header)
    return headers, bad


class DicomReader(PydicomReader):
    """MONAI's PydicomReader with one pixel decode per file and MONOCHROME1 inverted.

    MONAI's own ``_get_array_data`` decodes the pixel data twice (``hasattr`` then the value) and
    leaves MONOCHROME1 (bright = low values, common in CR exports) as stored.
    """

    def _get_array_data(self, img, filename):  # noqa: ARG002  (MONAI's signature)
        data = img.pixel_array.astype(np.float32)  # pydicom keeps BitsStored bits
        slope = float(getattr(img, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(img, "RescaleIntercept", 0.0) or 0.0)
        data = data * slope + intercept
        if str(getattr(img, "PhotometricInterpretation", "")) == "MONOCHROME1":
            bits = int(getattr(img, "BitsStored", 16))
            signed = int(getattr(img, "PixelRepresentation", 0)) == 1
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            data = (low + high) * slope + 2 * intercept - data
        return data


def _plain_mode(image):
    """PIL modes the reader passes on as they are; palette, bilevel, CMYK and others become RGB/L."""
    if image.mode in ("L", "RGB", "RGBA", "I", "I;16", "F"):
        return image
    return image.convert("L" if image.mode in ("1", "LA", "I;16B") else "RGB")


class ReadImaged(MapTransform):
    """Read ``data[key]`` (a path) as a float32 channel-first MONAI array, with the reader its format needs.

    Rows and columns keep numpy's order (row-major, as the file shows the image) for DICOM and PIL
    images; NIfTI volumes keep their stored axes.
    """

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)
        codec_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
        level = codec_log.level
        codec_log.setLevel(logging.ERROR)  # LoadImage builds MONAI's optional GPU DICOM reader and says it is absent
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_CODEC_WARNING)
                self.readers = {
                    "dicom": DicomReader(swap_ij=False),
                    "nifti": NibabelReader(),
                    "pil": PILReader(converter=_plain_mode, reverse_indexing=False),
                }
                self.load = LoadImage(
                    reader=self.readers["pil"], image_only=True, ensure_channel_first=True, dtype=np.float32
                )
        finally:
            codec_log.setLevel(level)

    def read(self, path: str):
        """The image at ``path``, channel first (raises BadFile when its format is unknown)."""
        fmt = image_format(Path(path))
        if fmt is None:
            raise BadFile(f"{path}: not a DICOM, NIfTI, PNG, JPEG, BMP or TIFF image")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_AFFINE_WARNING)
            return self.load(path, reader=self.readers[fmt])

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.read(str(d[key]))
        return d
