"""Membership inference: the loss-threshold attack (Yeom et al., CSF 2018).

score = -loss under the model; reported as ROC-AUC (0.5: the attacker learns nothing), the largest
TPR - FPR (Yeom's membership advantage) and the TPR at 1% FPR (Carlini et al., S&P 2022, argue for
low-FPR reporting; their likelihood-ratio attack, LiRA, needs shadow models and is not implemented).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Cross-entropy of every sample under ``model`` (eval mode), as a CPU tensor."""
    model.eval()
    out = [
        F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="none")
        for i in range(0, len(y), batch_size)
    ]
    return torch.cat(out).cpu()


def roc_auc(member_scores: torch.Tensor, non_member_scores: torch.Tensor) -> float:
    """ROC-AUC of telling members (label 1) from non-members by score (higher = member); MONAI's."""
    from monai.metrics import compute_roc_auc

    scores = torch.cat([member_scores, non_member_scores]).double()
    labels = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(non_member_scores))])
    return float(compute_roc_auc(scores, labels))


def roc_points(member_scores: torch.Tensor, non_member_scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold ``score >= t`` (ties share a point)."""
    scores = torch.cat([member_scores, non_member_scores]).double().numpy()
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp, fp = np.cumsum(labels)[last], np.cumsum(1 - labels)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def loss_threshold_attack(
    model: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
    balance: bool = True,
) -> dict[str, Any]:
    """Yeom et al.'s loss-threshold membership inference: score = -loss.

    With ``balance`` the larger group is cut to the smaller one's size (seeded), so that AUC and
    advantage are not skewed by the class ratio.

    Returns:
        ``auc``, ``advantage`` (max TPR - FPR), ``tpr_at_1pct_fpr``, group sizes and mean losses.
    """
    (mx, my), (nx, ny) = members, non_members
    if balance:
        rng = np.random.default_rng(seed)
        n = min(len(my), len(ny))
        mi = np.sort(rng.permutation(len(my))[:n])
        ni = np.sort(rng.permutation(len(ny))[:n])
        mx, my, nx, ny = mx[mi], my[mi], nx[ni], ny[ni]
    m_loss, n_loss = per_sample_loss(model, mx, my), per_sample_loss(model, nx, ny)
    fpr, tpr = roc_points(-m_loss, -n_loss)
    return {
        "attack": "loss-threshold (Yeom et al. 2018)",
        "auc": roc_auc(-m_loss, -n_loss),
        "advantage": float(np.max(tpr - fpr)),
        "tpr_at_1pct_fpr": float(np.max(tpr[fpr <= 0.01])),
        "members": len(my),
        "non_members": len(ny),
        "member_loss": float(m_loss.mean()),
        "non_member_loss": float(n_loss.mean()),
    }
