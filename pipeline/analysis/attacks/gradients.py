"""What a hospital reveals: the gradient of one local step, plain or as DP-SGD computes it, and the
weighted update the server receives, turned back into that gradient.

Without DP and encryption the server receives the float32 update ``(n_k / n_ref) * (w_local -
w_global)``; for one SGD step this is a known scale of the batch gradient, which the attacker
divides back out. With DP-SGD (as in Opacus's ``DPOptimizer``) each per-sample gradient is clipped
to ``max_grad_norm``, summed, noised with std ``noise_multiplier * max_grad_norm`` and divided by
the batch size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.privacy.plan import DPPlan


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """``model``'s parameters that take gradients, in order (the gradients below follow it)."""
    return [p for p in model.parameters() if p.requires_grad]


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Mean cross-entropy gradient of ``model``'s trainable parameters over the batch ``(x, y)``."""
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, trainable_params(model))]


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients, one tensor ``(B, *param.shape)`` per trainable parameter.

    A loop over the (small) batch: the same values Opacus's hooks compute, without wrapping the model.
    """
    grads = [batch_gradient(model, x[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    return [torch.stack(gs) for gs in zip(*grads, strict=True)]


def dp_sgd_gradient(
    per_sample: list[torch.Tensor], max_grad_norm: float, noise_multiplier: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """The gradient one DP-SGD step uses, computed as Opacus's ``DPOptimizer`` does.

    Each sample's gradient (over all parameters) is scaled by ``min(1, C / (||g_i|| + 1e-6))``, the
    clipped gradients are summed, Gaussian noise of std ``noise_multiplier * C`` is added to every
    coordinate, and the sum is divided by the batch size (Opacus: the expected batch size; for the
    attacked step, the batch it drew).
    """
    batch = per_sample[0].shape[0]
    norms = torch.stack([g.reshape(batch, -1).norm(dim=1) for g in per_sample]).norm(dim=0)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    std = noise_multiplier * max_grad_norm
    out = []
    for g in per_sample:
        summed = torch.einsum("b,b...->...", factor, g)
        noise = torch.normal(0.0, std, size=summed.shape, generator=generator, dtype=summed.dtype)  # CPU generator
        noise = noise.to(summed.device)
        out.append((summed + noise) / batch)
    return out


def observed_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DPPlan | None = None, seed: int = 0
) -> list[torch.Tensor]:
    """The batch gradient a hospital's single local step reveals through its update.

    Without ``plan``: the plain mean gradient. With ``plan`` (only ``max_grad_norm`` and
    ``noise_multiplier`` are used): the clipped, noised DP-SGD gradient of :func:`dp_sgd_gradient`,
    noise drawn from a generator seeded with ``seed``. ``model`` is put in eval mode (no dropout),
    the same mode the attacker uses.
    """
    model.eval()
    if plan is None:
        return batch_gradient(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    return dp_sgd_gradient(per_sample_gradients(model, x, y), plan.max_grad_norm, plan.noise_multiplier, gen)


def update_from_gradient(model: nn.Module, grads: list[torch.Tensor], lr: float, weight: float) -> np.ndarray:
    """The weighted update ``weight * (w_local - w_global)`` of one SGD step ``w -= lr * grad``.

    Laid out like :func:`pipeline.hospital.get_flat` (all state, buffers included: their change is 0),
    which is what the hospital encodes and sends.
    """
    by_param = {id(p): g for p, g in zip(trainable_params(model), grads, strict=True)}
    named = dict(model.named_parameters())
    parts = []
    for key, tensor in model.state_dict().items():
        p = named.get(key)
        if p is not None and id(p) in by_param:
            parts.append((-lr * weight * by_param[id(p)]).detach().reshape(-1).float().cpu())
        else:
            parts.append(torch.zeros(tensor.numel()))
    return torch.cat(parts).numpy().astype(np.float32)


def gradient_from_update(model: nn.Module, update: np.ndarray, lr: float, weight: float) -> list[torch.Tensor]:
    """Invert :func:`update_from_gradient`: the server knows ``lr`` and the weight ``n_k / n_ref``."""
    named = dict(model.named_parameters())
    wanted = {id(p) for p in trainable_params(model)}
    found: dict[int, torch.Tensor] = {}
    offset = 0
    for key, tensor in model.state_dict().items():
        n = tensor.numel()
        p = named.get(key)
        if p is not None and id(p) in wanted:
            chunk = torch.from_numpy(np.asarray(update[offset : offset + n], dtype=np.float32))
            found[id(p)] = (chunk / (-lr * weight)).reshape(p.shape).to(p.device)
        offset += n
    if offset != len(update):
        raise ValueError(f"update has {len(update)} values, the model's state has {offset}")
    return [found[id(p)] for p in trainable_params(model)]
