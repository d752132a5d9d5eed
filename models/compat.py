"""Making networks trainable under DP-SGD: BatchNorm policy and layer fixes.

Opacus cannot train BatchNorm (it mixes the samples of a batch). :func:`dp_ready` refuses such a
model with Opacus's own reason, or converts it to GroupNorm and logs that, as configured.
"""

from __future__ import annotations

import logging

import torch
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets.resnet import ResNetBlock
from opacus.validators import ModuleValidator
from torch import nn

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def replace_batchnorm(model: nn.Module, norm: object, spatial_dims: int = 2) -> nn.Module:
    """Swap every BatchNorm for the MONAI ``norm`` spec (in place); returns ``model``.

    MONAI 1.6's ResNet passes ``norm`` to the stem but not to its residual blocks, so the builder
    applies the configured norm here to every layer.
    """
    for name, child in model.named_children():
        if isinstance(child, _BATCHNORMS):
            setattr(model, name, get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=child.num_features))
        else:
            replace_batchnorm(child, norm, spatial_dims)
    return model


def disable_inplace(model: nn.Module) -> nn.Module:
    """Make in-place activations out-of-place: Opacus's backward hooks cannot see through them."""
    for module in model.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    return model


class OutOfPlaceResNetBlock(ResNetBlock):
    """MONAI's basic ResNet block with ``out = out + residual`` instead of ``out += residual``.

    Opacus's backward hooks return views that autograd forbids modifying in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


def out_of_place_residuals(model: nn.Module) -> nn.Module:
    """Switch every MONAI ``ResNetBlock`` to :class:`OutOfPlaceResNetBlock` (same weights)."""
    for module in model.modules():
        if type(module) is ResNetBlock:
            module.__class__ = OutOfPlaceResNetBlock
    return model


def dp_ready(model: nn.Module, policy: str) -> nn.Module:
    """Return a model Opacus can train: unchanged, converted to GroupNorm, or refused (ConfigError)."""
    problems = ModuleValidator.validate(model, strict=False)
    if not problems:
        return model
    if policy == "convert":
        fixed = ModuleValidator.fix(model)
        log.warning("privacy.batchnorm=convert: replaced %d layer(s) DP-SGD cannot train with GroupNorm", len(problems))
        return fixed
    reason = str(problems[0]).split(". ")[0]
    raise ConfigError(
        f"the model has {len(problems)} layer(s) DP-SGD cannot train ({reason}); use a GroupNorm model "
        "(model.norm=[group,{num_groups:8}]) or privacy.batchnorm=convert"
    )
