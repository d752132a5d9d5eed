"""Image quality of reconstructions: back to [0, 1] intensities, SSIM and PSNR (MONAI's metrics),
and matching each reconstruction to the true image of the same label it resembles most."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_unit(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalised images ``(v - mean) / std`` back to intensities in [0, 1]."""
    return (x * std + mean).clamp(0.0, 1.0)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [0, 1] images ``(B, C, H, W)`` (MONAI, 11x11 Gaussian window, sigma 1.5)."""
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
    return metric(a.float(), b.float()).reshape(len(a), -1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images ``(B, C, H, W)`` (MONAI)."""
    from monai.metrics import PSNRMetric

    return PSNRMetric(max_val=1.0, reduction="none")(a.float(), b.float()).reshape(len(a), -1).mean(dim=1)


def match_to_truth(recon: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reorder ``recon`` so each reconstruction faces the true image it resembles most (by SSIM).

    A batch's gradient does not say which dummy image stands for which true image among those of
    the same label, so matching is only done within a label (Hungarian assignment).
    """
    from scipy.optimize import linear_sum_assignment

    n = len(truth)
    score = np.zeros((n, n))
    for i in range(n):
        score[i] = ssim(truth[i : i + 1].expand_as(recon), recon).numpy()
    same = (labels[:, None] == labels[None, :]).numpy()
    cost = np.where(same, -score, 1e6)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(n, dtype=np.int64)
    order[rows] = cols
    return recon[torch.from_numpy(order)]


def image_scores(recon: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Mean and per-image SSIM and PSNR of [0, 1] images ``recon`` against ``truth``."""
    s, p = ssim(recon, truth), psnr(recon, truth)
    p = p.clamp(max=100.0)  # identical images give inf
    return {
        "ssim": float(s.mean()),
        "psnr": float(p.mean()),
        "ssim_per_image": [round(float(v), 4) for v in s],
        "psnr_per_image": [round(float(v), 2) for v in p],
    }
