"""DP-SGD with a budget that holds across the whole federated run (Abadi et al. 2016; Opacus).

:func:`plan_dp` derives the noise multiplier once, before round 1, from the target (epsilon,
delta), the Poisson sampling rate and the total number of steps the hospital takes over all
rounds. :class:`PrivacyLedger` carries the Opacus accountant's state from round to round (in
Flower's node context or a state file), so epsilon is cumulative and never resets, and refuses a
round that would overspend.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.bookkeeping import make_private_bookkeeping
from pipeline.errors import ConfigError

# Accept an epsilon this far above target as "within budget" (floating-point slack only).
BUDGET_SLACK = 1e-6


@dataclass(frozen=True)
class DPPlan:
    """What one hospital will spend: the same noise every step, for a fixed number of steps."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    target_epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds


def plan_dp(privacy: DictConfig, train_size: int, batch_size: int, local_epochs: int, rounds: int) -> DPPlan:
    """Noise multiplier that spends exactly the target epsilon over all planned steps.

    Raises:
        ConfigError: delta above 1/train_size, or a budget no noise level can meet.
    """
    if privacy.delta > 1.0 / train_size:
        raise ConfigError(
            f"privacy.delta={privacy.delta:g} is above 1/(training-set size) = 1/{train_size}; "
            f"use <= {1 / train_size:.2g}"
        )
    steps_per_epoch = math.ceil(train_size / batch_size)  # what Opacus's Poisson loader takes
    sample_rate = 1.0 / steps_per_epoch
    steps_per_round = steps_per_epoch * local_epochs
    try:
        noise = _noise_multiplier(
            float(privacy.epsilon), float(privacy.delta), sample_rate, steps_per_round * rounds, str(privacy.accountant)
        )
    except ValueError as err:
        raise ConfigError(
            f"privacy.epsilon={privacy.epsilon} cannot be met with {steps_per_round * rounds} steps at sample rate "
            f"{sample_rate:.3f} ({err}); raise the budget or train fewer rounds/epochs"
        ) from None
    return DPPlan(
        noise_multiplier=float(noise),
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        rounds=rounds,
        target_epsilon=float(privacy.epsilon),
        delta=float(privacy.delta),
        max_grad_norm=float(privacy.max_grad_norm),
        accountant=str(privacy.accountant),
    )


@functools.lru_cache(maxsize=64)
def _noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus's noise search, cached per process: it takes seconds and every round of a hospital asks again."""
    return get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=0.01,
    )


class PrivacyLedger:
    """One hospital's cumulative privacy spending: the Opacus accountant's state, serialisable."""

    def __init__(self, accountant: str, history: list | None = None) -> None:
        self.accountant = create_accountant(accountant)
        self.accountant.history = [tuple(h) for h in (history or [])]

    @classmethod
    def from_json(cls, text: str | None, accountant: str) -> PrivacyLedger:
        """Restore from :meth:`to_json` output; ``None`` or empty gives a fresh ledger."""
        if not text:
            return cls(accountant)
        state = json.loads(text)
        if state["mechanism"] != accountant:
            raise ConfigError(f"saved privacy state uses accountant {state['mechanism']!r}, config says {accountant!r}")
        return cls(accountant, state["history"])

    def to_json(self) -> str:
        return json.dumps({"mechanism": self.accountant.mechanism(), "history": self.accountant.history})

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.accountant.history))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far (0 before any step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta))

    def epsilon_after_round(self, plan: DPPlan) -> float:
        """Epsilon this hospital would have spent after one more round of ``plan``."""
        trial = copy.deepcopy(self.accountant)
        trial.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round))
        return float(trial.get_epsilon(delta=plan.delta))

    def can_afford_round(self, plan: DPPlan) -> bool:
        """False when the next round would take epsilon above the target."""
        return self.epsilon_after_round(plan) <= plan.target_epsilon * (1 + BUDGET_SLACK)


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
