"""Wrapping a model, optimizer and data set for one round of DP-SGD (Opacus, or book-keeping clipping).

The per-sample clipping is Opacus's (``hooks``, ``ghost``, ``functorch``) or :mod:`.bk_clipping`'s
(``bk``, the default); the DP optimizer and the accountant are Opacus's in every mode. The
Poisson batch selection and the Gaussian noise draw from the hospital's
:class:`~pipeline.privacy.randomness.MechanismRandomness` (never from the config's seed unless
the run is explicitly reproducible). The engine's accountant is the hospital's ledger, so every
step is recorded where the budget is kept.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ConfigError
from pipeline.privacy.bk_clipping import make_private_bookkeeping
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan
from pipeline.privacy.randomness import (
    REPRODUCIBLE,
    MechanismRandomness,
    draw_noise_from,
    mechanism_randomness,
    poisson_loader,
    randomness_kind,
)
from pipeline.reporting.timing import Stopwatch


@dataclass
class PrivateTraining:
    """Model, optimizer, criterion and loader wrapped by Opacus for one round of DP-SGD."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    engine: PrivacyEngine
    randomness: MechanismRandomness
    watch: Stopwatch  # phase ``dp``: the wrapping, per-sample clipping (book-keeping) and the noisy pre-step

    @property
    def dp_seconds(self) -> float:
        """Seconds spent so far in the parts of training only DP-SGD has."""
        return self.watch.seconds.get("dp", 0.0)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    batch_size: int,
    plan: DPPlan,
    ledger: PrivacyLedger,
    privacy: DictConfig,
    randomness: MechanismRandomness | None = None,
    criterion: nn.Module | None = None,
    views: int = 1,
) -> PrivateTraining:
    """Wrap for DP-SGD with Poisson sampling; the engine's accountant continues ``ledger``.

    Args:
        model, optimizer: what to train; ``optimizer`` becomes Opacus's DP optimizer around it.
        dataset: the hospital's training set.
        batch_size: the expected batch size the plan was made for (checked against its sample rate).
        plan: noise multiplier, sample rate and clipping norm.
        ledger: the hospital's ledger; every step is recorded in it.
        privacy: the ``privacy`` config group (clipping mode, randomness).
        randomness: where the batch selection and the noise come from; by default a fresh source
            of the kind ``privacy`` asks for (reproducible runs must pass their seeded one).
        criterion: the task's loss (cross-entropy by default); its per-sample form
            (``reduction="none"``) must give one loss per sample, shape [batch].
        views: augmented views per sample in each batch (augmentation multiplicity; bk mode only).
    """
    watch = Stopwatch()
    started = time.perf_counter()
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    if randomness is None:
        kind = randomness_kind(privacy)
        if kind == REPRODUCIBLE:
            raise ValueError("privacy.reproducible=true needs the seeded randomness of the round; pass randomness=")
        randomness = mechanism_randomness(kind, 0, 0, 0)
    steps = math.ceil(len(dataset) / batch_size)  # what the plan assumed (and Opacus's own loader would take)
    if abs(1.0 / steps - plan.sample_rate) > 1e-12:
        raise RuntimeError(f"planned sample rate {plan.sample_rate} differs from 1 / {steps} batches per epoch")
    with warnings.catch_warnings():  # Opacus's secure mode needs torchcsprng; the randomness is ours (randomness.py)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=plan.accountant, secure_mode=False)
    engine.accountant = ledger.accountant  # steps are recorded straight into the ledger
    loader = poisson_loader(dataset, plan.sample_rate, randomness)
    if views > 1 and str(privacy.grad_sample_mode) != "bk":
        raise ConfigError(
            f"train.augmentation_multiplicity={views} needs privacy.grad_sample_mode=bk "
            f"(not {privacy.grad_sample_mode}): only bk clips a sample's views as one"
        )
    if str(privacy.grad_sample_mode) == "bk":  # book-keeping clipping: ours, with Opacus's optimizer and accountant
        module, opt, criterion, dp_loader = make_private_bookkeeping(
            engine, model, optimizer, criterion, loader, plan.noise_multiplier, plan.max_grad_norm, views
        )
    else:
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=False,  # the loader already samples (from the hospital's randomness)
            grad_sample_mode=str(privacy.grad_sample_mode),
        )
        if len(wrapped) == 4:
            module, opt, criterion, dp_loader = wrapped
        else:
            module, opt, dp_loader = wrapped
    draw_noise_from(opt, randomness)
    watch.add("dp", time.perf_counter() - started)  # the wrapping itself
    # Opacus's optimizer step = pre_step (clip/accumulate, noise, scale, accounting) + the plain step
    opt.pre_step = watch.timed("dp", opt.pre_step)
    if hasattr(module, "clip_gradients"):  # book-keeping: the clipping after each backward pass
        module.clip_gradients = watch.timed("dp", module.clip_gradients)
    return PrivateTraining(module, opt, criterion, dp_loader, engine, randomness, watch)
