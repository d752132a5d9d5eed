"""The noise DP-SGD actually adds: standard deviation noise_multiplier x clipping norm, in every clipping mode.

Two copies of one model take the same DP step on the same batch, one with the planned noise and
one with none; their difference is the noise (divided by the expected batch size and scaled by
the learning rate). On an empty batch the whole step is noise. Thousands of parameters give the
standard deviation to about 1%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import privacy_cfg
from torch import nn

from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan
from pipeline.task.data import ImageDataset, make_synthetic

SIGMA, CLIP, LR = 2.0, 0.5, 1.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def _step(mode: str, noise: float, batch: slice) -> tuple[np.ndarray, int, PrivacyLedger]:
    s = make_synthetic(64, 2, 8, 1, seed=3)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    model = _model()
    ledger = PrivacyLedger("rdp")
    plan = DPPlan(noise, 1.0, 1, 1, 8.0, 1e-5, CLIP, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        data,
        len(data),
        plan,
        ledger,
        privacy_cfg(grad_sample_mode=mode),
    )
    x, y = data.x[batch], data.y[batch]
    dp.optimizer.zero_grad()
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    return weights, dp.optimizer.expected_batch_size, ledger


@pytest.mark.parametrize("batch", [slice(None), slice(0, 0)], ids=["full-batch", "empty-batch"])
@pytest.mark.parametrize("mode", ["bk", "hooks", "ghost"])
def test_added_noise_has_std_noise_multiplier_times_clipping_norm(mode, batch):
    # Execute
    noisy, expected_batch, ledger = _step(mode, SIGMA, batch)
    clean, _, _ = _step(mode, 0.0, batch)

    # Assert: the difference, rescaled, is N(0, (sigma C)^2) in every coordinate
    noise = -(noisy - clean) * expected_batch / LR
    assert noise.size > 4000
    assert np.std(noise) == pytest.approx(SIGMA * CLIP, rel=0.06)
    assert abs(np.mean(noise)) < 5 * SIGMA * CLIP / np.sqrt(noise.size)
    # the accountant records the noise multiplier the optimizer used, for the step it took
    assert ledger.accountant.history == [(SIGMA, 1.0, 1)]


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_a_clean_full_batch_step_is_not_noise(mode):
    """The reference of the test above moves the weights by the clipped gradient only."""
    clean, _, _ = _step(mode, 0.0, slice(None))
    start = np.concatenate([p.detach().numpy().ravel() for p in _model().parameters()])

    moved = clean - start
    assert 0 < np.abs(moved).max() < LR * CLIP  # a clipped mean gradient, not sigma-sized noise
