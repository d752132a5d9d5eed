"""MONAI transforms: preprocessing of image files and the configured augmentation.

Preprocessing (:func:`preprocessing`) is deterministic, so MONAI's PersistentDataset and
CacheDataset keep its result: read (:mod:`.readers`), channel layout (``data.channels``), resize
to ``data.image_size`` on every spatial axis, intensity to [0, 1] (``data.intensity``: ``minmax``
per image, or a fixed window ``[low, high]`` clipped), then ``(x - data.mean) / data.std``.

Augmentation (:func:`augmentation`) follows ``data.augment``: ``true`` is the light random affine
(rotation up to 10 degrees, shifts up to 5 %, scaling by up to 5 %), ``false`` none, a list names
MONAI array transforms by ``_target_`` (e.g. ``{_target_: monai.transforms.RandFlip, prob: 0.5,
spatial_axis: 1}``). It runs on each draw, after the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from monai.config import KeysCollection
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Randomizable,
    Resize,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, DataError
from pipeline.task.readers import ReadImaged

IMAGE_KEY = "image"
# ITU-R BT.601 luma: colour images read as greyscale look as PIL's convert("L") shows them.
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# Changes whenever preprocessing computes something else, so that no stale cache is read.
PREPROCESSING_VERSION = 1


@contextmanager
def no_metadata() -> Iterator[None]:
    """MONAI transforms return plain tensors inside (MetaTensor bookkeeping costs more than the transform)."""
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


class MatchLayoutd(MapTransform):
    """Give ``data[key]`` (C, *spatial) ``channels`` channels and ``spatial_dims`` spatial axes.

    Size-1 spatial axes are dropped until the count fits (a 2D image stored as a one-slice volume).
    Colour becomes greyscale by BT.601 luma, greyscale becomes colour by repetition, alpha is dropped.
    """

    def __init__(self, keys: KeysCollection, channels: int, spatial_dims: int) -> None:
        super().__init__(keys)
        self.channels, self.spatial_dims = channels, spatial_dims

    def layout(self, img: torch.Tensor, name: str) -> torch.Tensor:
        """``img`` with the configured channels and spatial axes; DataError naming ``name`` if impossible."""
        while img.ndim - 1 > self.spatial_dims and 1 in img.shape[1:]:
            img = img.squeeze(list(img.shape[1:]).index(1) + 1)
        if img.ndim - 1 != self.spatial_dims:
            raise DataError(f"{name}: image of shape {tuple(img.shape[1:])} is not {self.spatial_dims}D")
        c = img.shape[0]
        if c == self.channels:
            return img
        if c in (3, 4) and self.channels == 1:
            return torch.tensordot(_LUMA.to(img.dtype), img[:3], dims=1)[None]
        if c == 4 and self.channels == 3:
            return img[:3]
        if c == 1 and self.channels == 3:
            return img.expand(3, *img.shape[1:]).clone()
        raise DataError(f"{name}: image has {c} channels, data.channels={self.channels}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.layout(d[key], str(data.get("source", key)))
        return d


class ResizeToSided(MapTransform):
    """Resize ``data[key]`` to ``side`` on every spatial axis: area averaging when shrinking, else (bi/tri)linear.

    Area averaging is the anti-aliased shrink (MONAI's Gaussian anti-aliasing costs ~10x more).
    """

    def __init__(self, keys: KeysCollection, side: int, spatial_dims: int) -> None:
        super().__init__(keys)
        size = (side,) * spatial_dims
        self.side = side
        self.shrink = Resize(size, mode="area")
        self.grow = Resize(size, mode="bilinear" if spatial_dims == 2 else "trilinear")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            d[key] = (self.shrink if min(img.shape[1:]) >= self.side else self.grow)(img)
        return d


def intensity_range(intensity: Any) -> tuple[float, float] | None:
    """``data.intensity`` (validated) as a fixed window (low, high), or None for per-image min-max."""
    if isinstance(intensity, str):
        return None
    return float(intensity[0]), float(intensity[1])


def preprocessing(data: DictConfig) -> Compose:
    """The deterministic transforms from a manifest item ``{"image": path}`` to its normalised tensor."""
    dims, size = int(data.spatial_dims), int(data.image_size)
    window = intensity_range(data.intensity)
    scale: Transform = (
        ScaleIntensityd(IMAGE_KEY, minv=0.0, maxv=1.0)
        if window is None
        else ScaleIntensityRanged(IMAGE_KEY, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
    )
    return Compose(
        [
            ReadImaged(IMAGE_KEY),
            MatchLayoutd(IMAGE_KEY, int(data.channels), dims),
            ResizeToSided(IMAGE_KEY, size, dims),
            scale,
            NormalizeIntensityd(IMAGE_KEY, subtrahend=float(data.mean), divisor=float(data.std)),
            EnsureTyped(IMAGE_KEY, data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def preprocessing_key(data: DictConfig) -> str:
    """A short hash of every setting preprocessing depends on: the cache folder of those settings."""
    keys = ("channels", "spatial_dims", "image_size", "intensity", "mean", "std")
    settings = {k: OmegaConf.to_container(data, resolve=True).get(k) for k in keys}
    settings["version"] = PREPROCESSING_VERSION
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class LightAffine(Randomizable, Transform):
    """``data.augment=true``: a random rotation (up to 10 degrees about each axis), shift (up to 5 % of
    the side) and scaling (by up to 5 % on each axis) of one (C, *spatial) image, zeros outside.

    The same family as MONAI's ``RandAffine`` with these ranges, warped by torch's
    ``affine_grid``/``grid_sample`` directly: RandAffine's general machinery costs about 1 ms per
    28 px image, seven times the warp itself, and it ran on every draw of every round.
    """

    def __init__(self, spatial_dims: int, degrees: float = 10.0, shift: float = 0.05, scale: float = 0.05) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims}: the light affine warps 2D or 3D images")
        self.spatial_dims = spatial_dims
        self.max_angle, self.max_shift, self.max_scale = math.radians(degrees), shift, scale

    def matrix(self) -> torch.Tensor:
        """A fresh random (dims, dims + 1) sampling matrix in torch's normalised coordinates."""
        dims = self.spatial_dims
        angles = self.R.uniform(-self.max_angle, self.max_angle, 1 if dims == 2 else 3)
        shift = 2.0 * self.R.uniform(-self.max_shift, self.max_shift, dims)  # [-1, 1] spans the side
        scale = 1.0 + self.R.uniform(-self.max_scale, self.max_scale, dims)
        planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]  # 3D: about each axis in turn
        rotation = np.eye(dims)
        for (i, j), angle in zip(planes, angles, strict=True):
            step = np.eye(dims)
            step[i, i] = step[j, j] = math.cos(angle)
            step[i, j], step[j, i] = -math.sin(angle), math.sin(angle)
            rotation = step @ rotation
        linear = rotation @ np.diag(scale)
        return torch.from_numpy(np.concatenate([linear, shift[:, None]], axis=1)).float()

    def randomize(self, data: Any = None) -> None:
        """Draw this image's transform (kept in ``self.theta``)."""
        self.theta = self.matrix()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize()
        grid = F.affine_grid(self.theta[None], [1, *img.shape], align_corners=False)
        return F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


class Augmentation:
    """Random MONAI array transforms applied to one image tensor; seeded with :meth:`set_random_state`."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.compose = Compose(list(transforms))

    def set_random_state(self, seed: int) -> None:
        """Seed every random transform (one round's augmentation follows the round's seed)."""
        self.compose.set_random_state(seed=int(seed) % (2**32))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        with no_metadata():
            out = self.compose(img)
        return out.as_tensor() if hasattr(out, "as_tensor") else out


def augmentation(spec: Any, spatial_dims: int) -> Augmentation | None:
    """The augmentation ``data.augment`` names (None for ``false`` or an empty list).

    ``spec``: true, false, or a list of ``{_target_: ..., **kwargs}`` (the shape is checked by
    :func:`pipeline.config.validate.validate`).

    Raises:
        ConfigError: a transform that cannot be built, or one that is not a random MONAI array
            transform (dictionary transforms such as ``RandFlipd`` do not apply here).
    """
    if not spec:
        return None
    if spec is True:
        return Augmentation([LightAffine(spatial_dims)])
    built = []
    for i, entry in enumerate(spec):
        try:
            transform = instantiate(entry)
        except Exception as err:
            raise ConfigError(f"data.augment[{i}]: cannot build {entry['_target_']}: {err}") from None
        if not isinstance(transform, Transform) or isinstance(transform, MapTransform):
            raise ConfigError(
                f"data.augment[{i}]={entry['_target_']} is not a MONAI array transform "
                "(use e.g. RandFlip, not RandFlipd)"
            )
        if not isinstance(transform, Randomizable):
            raise ConfigError(f"data.augment[{i}]={entry['_target_']} is not random; augmentation transforms are")
        built.append(transform)
    return Augmentation(built)
