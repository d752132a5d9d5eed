"""Local training and evaluation loops (plain or DP-SGD: the optimizer and criterion decide)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.metrics import classification_metrics


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
