"""The DP-SGD budget of one hospital, planned once for the whole run (Abadi et al. 2016; Opacus).

:func:`plan_dp` derives the noise multiplier once, before round 1, from the target (epsilon,
delta), the Poisson sampling rate and the total number of steps the hospital takes over all
rounds, so that the whole run (not each round) spends the target.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from omegaconf import DictConfig
from opacus.accountants.utils import get_noise_multiplier

from pipeline.errors import ConfigError


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


def plan_for_run(cfg: DictConfig, num_train: int) -> DPPlan | None:
    """The plan of a hospital with ``num_train`` training images under ``cfg`` (None when DP is off)."""
    if not cfg.privacy.enabled:
        return None
    epochs, rounds = int(cfg.train.local_epochs), int(cfg.federation.rounds)
    return plan_dp(cfg.privacy, num_train, int(cfg.train.batch_size), epochs, rounds)
