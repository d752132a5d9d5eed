"""MONAI networks chosen by config (``conf/model/``).

Each builder takes the data-derived shape (``in_channels``, ``num_classes``, ``image_size``,
``spatial_dims``: 2 for images, 3 for volumes) plus its own config keys. Normalisation is a MONAI
``(name, kwargs)`` value; GroupNorm is the default because DP-SGD cannot train BatchNorm (it
mixes samples in a batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks import nets
from torch import nn

from models.compat import disable_inplace, out_of_place_residuals, replace_batchnorm
from models.scattering import Scattering

Norm = str | Sequence[Any]


def _norm(norm: Any) -> Any:
    """YAML lists -> MONAI's (name, kwargs) tuple."""
    if not isinstance(norm, str) and len(norm) == 2:  # list, tuple or OmegaConf ListConfig
        return (str(norm[0]), dict(norm[1]))
    return str(norm)


def cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] = (2, 2, 2),
    norm: Norm = ("group", {"num_groups": 8}),
    act: str = "relu",
    dropout: float = 0.0,
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI ``Classifier``: strided residual conv units then a linear head.

    Args:
        in_channels: image channels (1 greyscale, 3 RGB).
        num_classes: output logits.
        image_size: side of the square (cubic) input.
        channels: output channels of each stage; default (16, 32, 64), ~100k parameters at 28x28.
        strides: stride of each stage; default 2 each.
        norm: MONAI norm spec; default GroupNorm with 8 groups.
        act: activation; ReLU by default (PReLU's per-sample gradients are slower under DP).
        dropout: dropout probability; default 0.
        spatial_dims: 2 (images) or 3 (volumes: Conv3d throughout).
    """
    return nets.Classifier(
        in_shape=(in_channels, *(image_size,) * spatial_dims),
        classes=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        norm=_norm(norm),
        act=act,
        dropout=dropout or None,
    )


def scatter_cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    J: int = 2,  # noqa: N803 (the scattering literature's name)
    L: int = 8,  # noqa: N803
    channels: Sequence[int] = (32, 64),
    strides: Sequence[int] = (1, 2),
    norm: Norm = ("group", {"num_groups": 8}),
    act: str = "relu",
) -> nn.Module:
    """ScatterNet features (:class:`models.scattering.Scattering`, no parameters), a GroupNorm of
    them, then a MONAI ``Classifier`` over the feature maps (Tramer and Boneh 2021).

    Args:
        in_channels, num_classes, image_size: the data's shape.
        J, L: scattering scales and orientations (28 px, J=2, L=8: 81 maps of 7x7 per channel).
        channels, strides: the CNN's stages on the feature maps.
        norm, act: the CNN's normalisation and activation (MONAI specs).

    2-D only (no ``spatial_dims``: volumes are refused with the models that have a 3-D form).
    """
    features = Scattering(in_channels, image_size, J, L)
    groups = next(g for g in (27, 9, 3, 1) if features.out_channels % g == 0)
    cnn = nets.Classifier(
        in_shape=(features.out_channels, features.out_size, features.out_size),
        classes=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        norm=_norm(norm),
        act=act,
    )
    return nn.Sequential(features, nn.GroupNorm(groups, features.out_channels, affine=False), cnn)


def resnet18(
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: Norm = ("group", {"num_groups": 32}),
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI ResNet-18 (11.2M parameters 2D, 33M 3D); small inputs (< 64 px) get a 3x3 stem without max-pooling.

    Args:
        in_channels: image channels.
        num_classes: output logits.
        image_size: side of the square (cubic) input; decides the stem.
        norm: MONAI norm spec; default GroupNorm with 32 groups.
        spatial_dims: 2 (images) or 3 (volumes).
    """
    small = image_size < 64
    net = nets.resnet18(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        norm=_norm(norm),
    )
    return out_of_place_residuals(disable_inplace(replace_batchnorm(net, _norm(norm), spatial_dims)))


def densenet121(
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: Norm = ("group", {"num_groups": 8}),
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI DenseNet-121 (7M parameters 2D, 11M 3D).

    Args:
        in_channels: image channels.
        num_classes: output logits.
        image_size: side of the square (cubic) input; inputs below 64 are upsampled to 64 first,
            since the network halves the resolution five times.
        norm: MONAI norm spec; default GroupNorm with 8 groups.
        spatial_dims: 2 (images) or 3 (volumes).
    """
    net = disable_inplace(
        nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, norm=_norm(norm))
    )
    if image_size < 64:
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        return nn.Sequential(nn.Upsample(size=(64,) * spatial_dims, mode=mode, align_corners=False), net)
    return net
