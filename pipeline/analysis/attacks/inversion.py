"""The gradient inversion attack ("Inverting Gradients", Geiping et al., NeurIPS 2020).

An honest-but-curious server optimises dummy images so that their gradient matches the one a
hospital revealed: cosine-similarity loss over all parameter gradients plus a total-variation
prior, Adam on the images with signed gradients, images kept inside the valid intensity range,
labels assumed known as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.analysis.attacks.gradients import trainable_params


def cosine_gradient_loss(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """``1 - cos(grads, target)`` over all parameters concatenated (Geiping et al.'s cost)."""
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    norm_g = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    norm_t = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / (norm_g * norm_t + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of neighbouring pixels."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def invert_gradients(
    model: nn.Module,
    target_grad: list[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    iterations: int = 1000,
    tv_weight: float = 1e-2,
    lr: float = 0.1,
    seed: int = 0,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Reconstruct the images behind ``target_grad`` (Geiping et al. 2020, "Inverting Gradients").

    Dummy images (seeded Gaussian start, clamped to ``bounds``) are optimised with Adam on the
    sign of the gradient of ``1 - cos(grad(dummy), target_grad) + tv_weight * TV(dummy)``; the
    step size drops tenfold at 3/8, 5/8 and 7/8 of ``iterations``; after each step the images are
    clamped to ``bounds`` (the valid normalised intensity range). ``labels`` are assumed known.

    Returns:
        The reconstruction, shaped ``shape``, in the model's (normalised) input space.
    """
    model.eval()
    params = trainable_params(model)
    target = [t.detach() for t in target_grad]
    lo, hi = bounds
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).clamp(lo, hi).to(labels.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    milestones = sorted({max(1, int(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(x), labels), params, create_graph=True)
        cost = cosine_gradient_loss(grads, target) + tv_weight * total_variation(x)
        (x.grad,) = torch.autograd.grad(cost, x)
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def random_images(shape: tuple[int, ...], seed: int, bounds: tuple[float, float]) -> torch.Tensor:
    """The attack's starting point: seeded Gaussian noise clamped to ``bounds`` (the random baseline)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).clamp(*bounds)
