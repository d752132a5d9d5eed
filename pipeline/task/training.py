"""Local training (plain, FedProx or DP-SGD) and evaluation: the same loops in every mode.

The loss is the task's (:func:`task_criterion`): cross-entropy for single-label data, binary
cross-entropy over sigmoid outputs for multi-label data; DP-SGD clips per-sample gradients of
that same loss. Frozen parameters (``model.freeze``) are left out of the optimizer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan
from pipeline.privacy.randomness import MechanismRandomness
from pipeline.task.data import AugmentedViews, seed_augmentation
from pipeline.task.metrics import classification_metrics


class MultiLabelBCE(nn.BCEWithLogitsLoss):
    """Binary cross-entropy over every finding; ``reduction="none"`` gives one loss per sample.

    A sample's loss is the mean over its findings, so that per-sample clipping (Opacus's ghost
    mode and book-keeping alike take ``reduction="none"`` losses of shape [batch]) bounds each
    image's whole contribution, and ``mean`` is the plain mean over batch and findings.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002  (torch's name)
        if self.reduction != "none":
            return super().forward(input, target.to(input.dtype))
        per_entry = nn.functional.binary_cross_entropy_with_logits(
            input, target.to(input.dtype), self.weight, pos_weight=self.pos_weight, reduction="none"
        )
        return per_entry.mean(dim=1)


def task_criterion(cfg: DictConfig) -> nn.Module:
    """The training loss: :class:`MultiLabelBCE` when ``data.multi_label``, else cross-entropy."""
    return MultiLabelBCE() if cfg.data.get("multi_label") else nn.CrossEntropyLoss()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def round_seed(seed: int, hospital: int, rnd: int, attempt: int = 0) -> int:
    """The seed of hospital ``hospital``'s local training in round ``rnd``, try ``attempt`` (a 32-bit integer)."""
    entropy = [int(seed), int(hospital), int(rnd)] + ([int(attempt)] if attempt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    device: torch.device,
    views: int = 1,
) -> float:
    """Run ``epochs`` passes over ``loader``; return the mean training loss of the last epoch.

    ``views`` > 1: the loader's items are :class:`~pipeline.task.data.AugmentedViews`, flattened
    here into ``views`` consecutive rows per sample (labels repeated).

    Empty batches (possible under Poisson sampling) are skipped: they release nothing, and the
    accountant then records fewer steps than planned, which only overstates epsilon.
    """
    model.train()
    last = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            if len(y) == 0:
                continue
            if views > 1:
                x, y = x.flatten(0, 1), y.repeat_interleave(views, dim=0)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
        last = total / max(count, 1)
    return last


def proximal_loss(criterion: nn.Module, model: nn.Module, anchor: list[torch.Tensor], mu: float) -> nn.Module:
    """FedProx: ``criterion`` plus (mu/2)||w - w_anchor||^2 (plain training only)."""

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        return criterion(out, y) + 0.5 * mu * prox

    return loss


def train_round(
    cfg: DictConfig,
    model: nn.Module,
    train_set: Dataset,
    epochs: int,
    device: torch.device,
    plan: DPPlan | None,
    ledger: PrivacyLedger | None,
    seed: int,
    proximal_mu: float = 0.0,
    randomness: MechanismRandomness | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` (DP-SGD when ``plan`` is given); returns loss and timing
    (``train_seconds`` in all, of which ``dp_seconds`` in the parts only DP-SGD has).

    ``seed`` seeds what lies outside the DP mechanism (augmentation, the plain loader's shuffle);
    the mechanism's batch selection and noise come from ``randomness`` (see
    :func:`pipeline.privacy.randomness.round_randomness`).
    """
    torch.manual_seed(seed)
    seed_augmentation(train_set, seed)
    views = int(cfg.train.get("augmentation_multiplicity") or 1)
    if views > 1:
        train_set = AugmentedViews(train_set, views)
    torch.set_num_threads(int(cfg.train.threads))
    model.to(device).train()  # Opacus wraps training-mode models only (baselines evaluate in between)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.train.optimizer)(params=trainable)
    criterion = task_criterion(cfg)
    start = time.perf_counter()
    dp_seconds = 0.0
    if plan is not None:
        batch = int(cfg.train.batch_size)
        private = make_private(
            model, optimizer, train_set, batch, plan, ledger, cfg.privacy, randomness, criterion=criterion, views=views
        )
        loss = train_epochs(private.model, private.loader, private.optimizer, private.criterion, epochs, device, views)
        if hasattr(private.model, "remove_hooks"):
            private.model.remove_hooks()  # leave a plain module behind for evaluation
        dp_seconds = private.dp_seconds
    else:
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_set, batch_size=int(cfg.train.batch_size), shuffle=True, generator=gen)
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in model.parameters()]
            criterion = proximal_loss(criterion, model, anchor, proximal_mu)
        loss = train_epochs(model, loader, optimizer, criterion, epochs, device, views)
    model.cpu()
    return {"train_loss": loss, "train_seconds": time.perf_counter() - start, "dp_seconds": dp_seconds}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512):
    """Logits and labels of ``dataset`` (CPU tensors)."""
    model.eval()
    outs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        outs.append(model(x.to(device)).cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, Any]:
    """ROC-AUC, accuracy, MCC and loss of ``model`` on ``dataset`` (and ``per_label`` for multi-label data)."""
    logits, labels = predict(model, dataset, device)
    return classification_metrics(logits, labels, getattr(dataset, "class_names", None))
