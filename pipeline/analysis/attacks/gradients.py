"""What a hospital reveals: the gradient of one local step, plain or as DP-SGD computes it, and the
weighted update the server receives, turned back into that gradient.

Without DP and encryption the server receives the float32 update ``(n_k / n_ref) * (w_local -
w_global)``; for one SGD step this is a known scale of the batch gradient, which the attacker
divides back out. With DP-SGD, the attacked gradient is the one the pipeline's own DP step takes
(:func:`dp_step_gradient`): per-sample gradients clipped to ``max_grad_norm``, summed, noised with
std ``noise_multiplier * max_grad_norm`` and divided by the batch size.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import TensorDataset

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


def dp_step_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DPPlan, privacy: DictConfig
) -> list[torch.Tensor]:
    """The gradient one DP-SGD step of the pipeline itself uses on the batch ``(x, y)``.

    Not a re-implementation: a copy of ``model`` is wrapped by :func:`pipeline.privacy.engine.make_private`
    with the run's clipping mode, noise multiplier and clipping norm (the batch is the whole data
    set, sampling rate 1), takes one SGD step of learning rate 1, and the step it took is the
    gradient: clipped per-sample gradients summed, Gaussian noise of std ``noise_multiplier * C``,
    divided by the batch size.
    """
    from pipeline.privacy.engine import make_private
    from pipeline.privacy.ledger import PrivacyLedger

    local = copy.deepcopy(model).train()
    before = [p.detach().clone() for p in trainable_params(local)]
    step_plan = dataclasses.replace(plan, sample_rate=1.0, steps_per_round=1, rounds=1)
    optimizer = torch.optim.SGD(trainable_params(local), lr=1.0)
    dp = make_private(local, optimizer, TensorDataset(x, y), len(y), step_plan, PrivacyLedger(plan.accountant), privacy)
    dp.optimizer.zero_grad(set_to_none=True)
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()
    if hasattr(dp.model, "remove_hooks"):
        dp.model.remove_hooks()
    return [b - p.detach() for b, p in zip(before, trainable_params(local), strict=True)]


def observed_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DPPlan | None = None, privacy: DictConfig | None = None
) -> list[torch.Tensor]:
    """The batch gradient a hospital's single local step reveals through its update.

    Without ``plan``: the plain mean gradient. With ``plan`` and the ``privacy`` config: the
    clipped, noised gradient of the pipeline's own DP-SGD step (:func:`dp_step_gradient`).
    ``model`` is put in eval mode (no dropout), the same mode the attacker uses.
    """
    model.eval()
    if plan is None:
        return batch_gradient(model, x, y)
    if privacy is None:
        raise ValueError("a DP gradient needs the privacy config (clipping mode)")
    return dp_step_gradient(model, x, y, plan, privacy)


def update_from_gradient(model: nn.Module, grads: list[torch.Tensor], lr: float, weight: float) -> np.ndarray:
    """The weighted update ``weight * (w_local - w_global)`` of one SGD step ``w -= lr * grad``.

    Laid out like :func:`pipeline.task.model.get_flat` (all state, buffers included: their change is 0),
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
