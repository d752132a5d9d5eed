"""Wrapping a model, optimizer and data set for one round of DP-SGD (Opacus, or book-keeping clipping).

Poisson sampling, the Gaussian noise and the accountant are Opacus's in every mode; the
per-sample clipping is Opacus's (``hooks``, ``ghost``, ``functorch``) or :mod:`.bk_clipping`'s
(``bk``, the default). The engine's accountant is the hospital's ledger, so every step is
recorded where the budget is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.privacy.bk_clipping import make_private_bookkeeping
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan


@dataclass
class PrivateTraining:
    """Model, optimizer, criterion and loader wrapped by Opacus for one round of DP-SGD."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    engine: PrivacyEngine


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    batch_size: int,
    plan: DPPlan,
    ledger: PrivacyLedger,
    privacy: DictConfig,
) -> PrivateTraining:
    """Wrap for DP-SGD with Poisson sampling; the engine's accountant continues ``ledger``."""
    engine = PrivacyEngine(accountant=plan.accountant, secure_mode=bool(privacy.secure_mode))
    engine.accountant = ledger.accountant  # steps are recorded straight into the ledger
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if str(privacy.grad_sample_mode) == "bk":  # book-keeping clipping: ours, with Opacus's loader/noise/accountant
        wrapped = make_private_bookkeeping(
            engine, model, optimizer, nn.CrossEntropyLoss(), loader, plan.noise_multiplier, plan.max_grad_norm
        )
    else:
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=str(privacy.grad_sample_mode),
        )
    if len(wrapped) == 4:
        module, opt, criterion, dp_loader = wrapped
    else:
        module, opt, dp_loader = wrapped
        criterion = nn.CrossEntropyLoss()
    if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:
        raise RuntimeError(f"planned sample rate {plan.sample_rate} differs from Opacus's {1 / len(loader)}")
    return PrivateTraining(module, opt, criterion, dp_loader, engine)
