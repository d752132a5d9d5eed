"""The HE-friendly network (``model=he_cnn``): layers CKKS can evaluate on an encrypted image.

One strided convolution, a polynomial activation, a linear layer, the activation again and a
linear head: multiplications and additions only, so a model owner can run it on a ciphertext
(:mod:`pipeline.inference.encrypted`; the convolution in TenSEAL's im2col encoding). There is no
normalisation layer (CKKS cannot divide by a data-dependent norm) and no ReLU (not a polynomial).

The activation is :class:`ScaledSquare`, ``a*x^2 + b*x`` with fixed coefficients: a plain ``x^2``
lets activations grow quadratically layer after layer, which DP-SGD's clipped, noisy steps do not
keep in check; a small ``a`` next to ``b = 1`` keeps the network close to linear at the start and
still one multiplicative level deep under CKKS. The coefficients are constants, not parameters,
so DP-SGD's per-sample clipping (``bk`` and Opacus) sees only the Conv2d and Linear layers.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError


class ScaledSquare(nn.Module):
    """``a * x**2 + b * x``, element-wise, with constant coefficients (no trainable parameters)."""

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        if a == 0:
            raise ConfigError("model.square_coef=0 makes the activation linear; use a non-zero value such as 0.1")
        self.a, self.b = float(a), float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x * x + self.b * x

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}"


def conv_windows(image_size: int, kernel_size: int, stride: int) -> int:
    """Output positions per side of an unpadded ``kernel_size`` convolution with ``stride``."""
    return (image_size - kernel_size) // stride + 1


def he_cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    conv_channels: int = 4,
    kernel_size: int = 7,
    stride: int = 3,
    hidden: int = 32,
    square_coef: float = 0.1,
    linear_coef: float = 1.0,
) -> nn.Sequential:
    """Conv2d (no padding) -> ScaledSquare -> Flatten -> Linear -> ScaledSquare -> Linear.

    Args:
        in_channels: image channels (1 greyscale; each colour channel is one more encrypted query).
        num_classes: output logits.
        image_size: side of the square input (28 for MedMNIST).
        conv_channels: convolution filters; each is one im2col convolution under CKKS, and the first
            linear layer's cost grows with ``conv_channels * windows**2`` (4 at 28x28: 256 inputs).
        kernel_size: side of the convolution kernel (7: 49 values per window).
        stride: convolution stride (3: an 8x8 output at 28x28, 64 windows x 49 = 3136 CKKS slots).
        hidden: units of the hidden linear layer.
        square_coef: ``a`` of the activation ``a*x^2 + b*x`` (non-zero).
        linear_coef: ``b`` of the activation.

    Raises:
        ConfigError: the kernel does not fit the image.
    """
    if not 0 < kernel_size <= image_size or stride < 1:
        raise ConfigError(
            f"model.kernel_size={kernel_size}, model.stride={stride}: need 1 <= kernel_size <= image size "
            f"({image_size}) and stride >= 1"
        )
    if conv_channels < 1 or hidden < 1:
        raise ConfigError(f"model.conv_channels={conv_channels}, model.hidden={hidden}: both must be >= 1")
    side = conv_windows(image_size, kernel_size, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, conv_channels, kernel_size, stride=stride),
        ScaledSquare(square_coef, linear_coef),
        nn.Flatten(),
        nn.Linear(conv_channels * side * side, hidden),
        ScaledSquare(square_coef, linear_coef),
        nn.Linear(hidden, num_classes),
    )
