"""The DP-SGD budget of one hospital, planned once for the whole run (Abadi et al. 2016; Opacus).

:func:`plan_dp` derives the noise multiplier once, before round 1, from the target (epsilon,
delta), the Poisson sampling rate and the total number of steps the hospital takes over all
rounds, so that the whole run (not each round) spends the target.

Opacus's noise search takes seconds (about 5 s for the default run with the PRV accountant) and
every process that plans asks (the driver's check, each hospital worker). Its answers are kept in
a file cache (``$FEDMED_CACHE_DIR``, default ``~/.cache/fedmed``), and a cached answer is used only
after one accountant evaluation confirms it spends between the target less the search's
tolerance and the target: a stale or tampered cache can cost a search, never privacy.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import opacus
from omegaconf import DictConfig
from opacus.accountants.utils import get_noise_multiplier

from pipeline.errors import ConfigError
from pipeline.privacy.accounting import history_epsilon
from pipeline.reporting.atomic import write_atomic

CACHE_ENV = "FEDMED_CACHE_DIR"
CACHE_FILE = "noise_multipliers.json"
EPSILON_TOLERANCE = 0.01  # the search stops this close below the target


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


def cache_file() -> Path:
    """Where searched noise multipliers are kept (``$FEDMED_CACHE_DIR``, default ``~/.cache/fedmed``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedmed") / CACHE_FILE


def spends(noise: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Epsilon that ``steps`` Poisson-sampled steps at ``noise`` spend (one accountant evaluation)."""
    return history_epsilon([(noise, sample_rate, steps)], delta, accountant)


@functools.lru_cache(maxsize=64)
def _noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus's noise search, cached per process and (verified) on disk."""
    key = json.dumps([epsilon, delta, sample_rate, steps, accountant, EPSILON_TOLERANCE, opacus.__version__])
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cached = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(cached, (int, float)) and cached > 0:
        spent = spends(cached, delta, sample_rate, steps, accountant)
        if epsilon - EPSILON_TOLERANCE <= spent <= epsilon:
            return float(cached)
    noise = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=EPSILON_TOLERANCE,
    )
    try:
        write_atomic(path, json.dumps({**(cache if isinstance(cache, dict) else {}), key: float(noise)}, indent=1))
    except OSError:
        pass  # a read-only home: the search is simply repeated next time
    return float(noise)


def plan_for_run(cfg: DictConfig, num_train: int) -> DPPlan | None:
    """The plan of a hospital with ``num_train`` training images under ``cfg`` (None when DP is off)."""
    if not cfg.privacy.enabled:
        return None
    epochs, rounds = int(cfg.train.local_epochs), int(cfg.federation.rounds)
    return plan_dp(cfg.privacy, num_train, int(cfg.train.batch_size), epochs, rounds)
