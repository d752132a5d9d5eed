"""Local training (plain, FedProx or DP-SGD) and evaluation: the same loops in every mode."""

from __future__ import annotations

import time

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
from pipeline.task.metrics import classification_metrics


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def round_seed(seed: int, hospital: int, rnd: int) -> int:
    """The seed of hospital ``hospital``'s local training in round ``rnd`` (a 32-bit integer)."""
    return int(np.random.SeedSequence([int(seed), int(hospital), int(rnd)]).generate_state(1)[0])


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    device: torch.device,
) -> float:
    """Run ``epochs`` passes over ``loader``; return the mean training loss of the last epoch.

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
    """Train ``model`` in place for ``epochs`` (DP-SGD when ``plan`` is given); returns loss and timing.

    ``seed`` seeds what lies outside the DP mechanism (augmentation, the plain loader's shuffle);
    the mechanism's batch selection and noise come from ``randomness`` (see
    :func:`pipeline.privacy.randomness.round_randomness`).
    """
    torch.manual_seed(seed)
    torch.set_num_threads(int(cfg.train.threads))
    model.to(device).train()  # Opacus wraps training-mode models only (baselines evaluate in between)
    optimizer = instantiate(cfg.train.optimizer)(params=model.parameters())
    start = time.perf_counter()
    if plan is not None:
        batch = int(cfg.train.batch_size)
        private = make_private(model, optimizer, train_set, batch, plan, ledger, cfg.privacy, randomness)
        loss = train_epochs(private.model, private.loader, private.optimizer, private.criterion, epochs, device)
        if hasattr(private.model, "remove_hooks"):
            private.model.remove_hooks()  # leave a plain module behind for evaluation
    else:
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_set, batch_size=int(cfg.train.batch_size), shuffle=True, generator=gen)
        criterion: nn.Module = nn.CrossEntropyLoss()
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in model.parameters()]
            criterion = proximal_loss(criterion, model, anchor, proximal_mu)
        loss = train_epochs(model, loader, optimizer, criterion, epochs, device)
    model.cpu()
    return {"train_loss": loss, "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512):
    """Logits and labels of ``dataset`` (CPU tensors)."""
    model.eval()
    outs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        outs.append(model(x.to(device)).cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, float]:
    """ROC-AUC, accuracy, MCC and loss of ``model`` on ``dataset``."""
    logits, labels = predict(model, dataset, device)
    return classification_metrics(logits, labels)
