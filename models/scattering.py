"""Handcrafted features for DP: the scattering transform before a small CNN (Tramer and Boneh 2021).

A ScatterNet (Mallat's wavelet scattering, with the ``kymatio`` package's Morlet filter bank) has
no trainable parameters: under DP-SGD its features cost no privacy and add no noise, and the CNN
after it learns from features that already separate edges and textures at every orientation.
With ``J=2`` and ``L=8`` a 28x28 greyscale image becomes 81 feature maps of 7x7.

The transform runs at every training step (the augmented images change every epoch, so the
features cannot be computed once), and it was about two thirds of a hospital's training time
with kymatio's own forward pass, which loops over the 81 paths one by one. :class:`Scattering` computes
the same coefficients (kymatio's filters, padding and path order; equal to ~1e-6, pinned by
tests/task/test_models.py) with the paths batched: one broadcast product per scale pair for all
orientations, the Fourier periodisation (the spectrum of a subsampled image: the mean of its
aliased blocks) summed block by block on views of the spectrum, so nothing is copied into a new
layout, and every low-pass-and-subsample (a fixed linear map of a real image) as one matrix
product: 2.0x faster on one CPU thread, and a hospital's round of training 1.5x
(``scripts/bench_scattering.py``, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError


def _lowpass_matrix(phi: torch.Tensor, k: int) -> torch.Tensor:
    """The real ``[side^2, out^2]`` matrix of kymatio's low-pass step at one resolution.

    A real ``side x side`` image ``u`` -> ``real(ifft2(periodize(fft2(u) * phi, k)))`` without its
    one-pixel border: linear in ``u``, so it is computed once on the identity basis (float64).
    """
    side, h = phi.shape[-1], phi.shape[-1] // k
    basis = torch.fft.fft2(torch.eye(side * side, dtype=torch.float64).reshape(-1, side, side)) * phi
    periodized = basis.unflatten(-1, (k, h)).unflatten(-3, (k, h)).sum((-4, -2)) / (k * k)
    low = torch.fft.ifft2(periodized).real[..., 1:-1, 1:-1]
    return low.flatten(1).float()


def _wavelet_modulus(spectrum: torch.Tensor, psi: torch.Tensor, k: int) -> torch.Tensor:
    """``|ifft2(periodize(spectrum[:, :, None] * psi, k))|`` for every orientation at once.

    ``spectrum``: ``[N, T, H, W]`` complex; ``psi``: ``[L, H, W]`` real (in Fourier) -> ``[N, T, L, H/k, W/k]``.
    The periodisation (the spectrum of the image subsampled by ``k`` per side: the mean of its
    ``k x k`` aliased blocks) is taken block by block on views of ``spectrum``, so the full-size
    ``[N, T, L, H, W]`` product is never stored and nothing is copied into a new layout.
    """
    h, w = spectrum.shape[-2] // k, spectrum.shape[-1] // k
    product = None
    for a in range(k):
        for b in range(k):
            block = spectrum[:, :, None, a * h : (a + 1) * h, b * w : (b + 1) * w]
            term = block * (psi[:, a * h : (a + 1) * h, b * w : (b + 1) * w] / (k * k))
            product = term if product is None else product.add_(term)
    z = torch.view_as_real(torch.fft.ifft2(product))
    # |z| with a zero gradient where z = 0 (kymatio's ModulusStable), e.g. a blank image's wavelet responses
    return torch.addcmul(z[..., 0] * z[..., 0], z[..., 1], z[..., 1]).clamp_min(1e-38).sqrt()


class Scattering(nn.Module):
    """2-D wavelet scattering of order 2 as a parameter-free layer: [B, C, H, W] -> [B, C * K, H / 2^J, W / 2^J].

    The coefficients and their order are kymatio's ``Scattering2D(J, (H, W), L)`` (order 0, then
    order 1 by scale and orientation, then order 2 by ``(j1, theta1, j2, theta2)``).

    Args:
        in_channels: image channels.
        image_size: side of the square input.
        J: scales (the output is 2^J times smaller per side).
        L: orientations per scale.
    """

    def __init__(self, in_channels: int, image_size: int, J: int = 2, L: int = 8) -> None:  # noqa: N803 (kymatio's names)
        super().__init__()
        try:  # kymatio.torch imports its 3-D frontend too, which needs a SciPy older than 1.15
            from kymatio.scattering2d.backend.torch_backend import Pad
            from kymatio.scattering2d.filter_bank import filter_bank
            from kymatio.scattering2d.utils import compute_padding
        except ImportError as err:
            raise ConfigError(f"model=scatter_cnn needs the kymatio package ({err}); pip install kymatio") from None
        if image_size % (1 << J):
            raise ConfigError(f"model.J={J}: the image side {image_size} must be a multiple of 2^J={1 << J}")
        padded = compute_padding(image_size, image_size, J)[0]
        self.pad = Pad([(padded - image_size) // 2, (padded - image_size + 1) // 2] * 2, [image_size, image_size])
        bank = filter_bank(padded, padded, J, L)
        # The filters are constants every party rebuilds from (J, L, size): non-persistent buffers,
        # so they never travel in (or get moved by the aggregation of) a model update.
        for res, phi in enumerate(bank["phi"]["levels"]):
            low = _lowpass_matrix(torch.from_numpy(phi), 1 << (J - res))
            self.register_buffer(f"low{res}", low, persistent=False)
        for j in range(J):
            psis = [f for f in bank["psi"] if f["j"] == j]
            for res in range(len(psis[0]["levels"])):
                stacked = torch.stack([torch.from_numpy(f["levels"][res]) for f in psis]).float()
                self.register_buffer(f"psi{j}_{res}", stacked, persistent=False)
        self.J = J
        self.in_channels = in_channels
        self.out_channels = in_channels * (1 + J * L + L * L * J * (J - 1) // 2)
        self.out_size = image_size >> J

    def _lowpass(self, image: torch.Tensor, res: int) -> torch.Tensor:
        """Real images at resolution ``res`` [..., side, side] -> their low-pass coefficients [..., out^2]."""
        return image.flatten(-2) @ getattr(self, f"low{res}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        u = self.pad(x.reshape(-1, *x.shape[-2:]))[..., 0]  # [N*C, P, P], reflection-padded
        spectrum = torch.fft.fft2(u)[:, None]
        order0 = self._lowpass(u, 0)[:, None]
        order1, order2 = [], []
        for j1 in range(self.J):
            u1 = _wavelet_modulus(spectrum, getattr(self, f"psi{j1}_0"), 1 << j1)[:, 0]  # [N*C, L, P/2^j1, ...]
            order1.append(self._lowpass(u1, j1))
            if j1 + 1 < self.J:
                u1_spectrum = torch.fft.fft2(u1)
                paths = [
                    self._lowpass(_wavelet_modulus(u1_spectrum, getattr(self, f"psi{j2}_{j1}"), 1 << (j2 - j1)), j2)
                    for j2 in range(j1 + 1, self.J)
                ]
                order2.append(torch.cat(paths, 2).flatten(1, 2))  # (theta1, j2, theta2)
        out = torch.cat([order0, *order1, *order2], 1)
        return out.reshape(n, self.out_channels, self.out_size, self.out_size)
