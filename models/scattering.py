"""Handcrafted features for DP: the scattering transform before a small CNN (Tramer and Boneh 2021).

A ScatterNet (Mallat's wavelet scattering, from the ``kymatio`` package) has no trainable
parameters: under DP-SGD its features cost no privacy and add no noise, and the CNN after it
learns from features that already separate edges and textures at every orientation. With
``J=2`` and ``L=8`` a 28x28 greyscale image becomes 81 feature maps of 7x7.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError


class Scattering(nn.Module):
    """2-D wavelet scattering of order 2 as a parameter-free layer: [B, C, H, W] -> [B, C * K, H / 2^J, W / 2^J].

    Args:
        in_channels: image channels.
        image_size: side of the square input.
        J: scales (the output is 2^J times smaller per side).
        L: orientations per scale.
    """

    def __init__(self, in_channels: int, image_size: int, J: int = 2, L: int = 8) -> None:  # noqa: N803 (kymatio's names)
        super().__init__()
        try:  # kymatio.torch imports its 3-D frontend too, which needs a SciPy older than 1.15
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
        except ImportError as err:
            raise ConfigError(f"model=scatter_cnn needs the kymatio package ({err}); pip install kymatio") from None
        if image_size % (1 << J):
            raise ConfigError(f"model.J={J}: the image side {image_size} must be a multiple of 2^J={1 << J}")
        self.scattering = ScatteringTorch2D(J=J, shape=(image_size, image_size), L=L)
        # The wavelet filters are constants every party rebuilds from (J, L, size): kept out of the
        # state_dict, so they never travel in (or get moved by the aggregation of) a model update.
        for name, filt in list(self.scattering._buffers.items()):
            del self.scattering._buffers[name]
            self.scattering.register_buffer(name, filt, persistent=False)
        self.in_channels = in_channels
        self.out_channels = in_channels * (1 + J * L + L * L * J * (J - 1) // 2)
        self.out_size = image_size >> J

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scattering(x.contiguous())  # [B, C, K, H', W']
        return out.reshape(len(x), self.out_channels, self.out_size, self.out_size)
