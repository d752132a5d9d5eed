"""The HE-friendly network (models/he_cnn.py): its shape, and DP-SGD through its square activations."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, privacy_cfg
from hydra.utils import instantiate
from torch import nn

from models.compat import dp_ready
from models.he_cnn import ScaledSquare, he_cnn
from pipeline.errors import ConfigError
from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan
from pipeline.task.data import ImageDataset, make_synthetic


def test_config_builds_the_documented_layers_for_28x28():
    # Prepare
    cfg = compose_cfg("model=he_cnn", "data=synthetic")

    # Execute
    model = instantiate(cfg.model)(in_channels=1, num_classes=2, image_size=28)
    logits = model(torch.randn(3, 1, 28, 28))

    # Assert: conv 7x7 stride 3 (8x8 windows) -> square -> flatten -> linear -> square -> linear
    kinds = [type(m) for m in model]
    assert kinds == [nn.Conv2d, ScaledSquare, nn.Flatten, nn.Linear, ScaledSquare, nn.Linear]
    assert model[0].kernel_size == (7, 7) and model[0].stride == (3, 3) and model[0].padding == (0, 0)
    assert model[3].in_features == model[0].out_channels * 8 * 8
    assert logits.shape == (3, 2)
    assert dp_ready(model, "refuse") is model  # no BatchNorm, nothing to convert
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) for m in model.modules())


def test_scaled_square_has_no_parameters_and_computes_a_x2_plus_b_x():
    # Prepare
    act = ScaledSquare(0.25, -2.0)
    x = torch.tensor([-2.0, 0.0, 3.0])

    # Execute / Assert
    assert list(act.parameters()) == []
    torch.testing.assert_close(act(x), 0.25 * x * x - 2.0 * x)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"square_coef": 0.0}, "square_coef=0"), ({"kernel_size": 30}, "kernel_size=30"), ({"hidden": 0}, "hidden=0")],
)
def test_bad_shapes_are_refused_with_the_key(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        he_cnn(1, 2, 28, **kwargs)


def _private_step(model: nn.Module, data: ImageDataset, mode: str, noise: float, clip: float) -> None:
    plan = DPPlan(noise, 1.0, 1, 1, 8.0, 1e-5, clip, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data,
        len(data),
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode=mode),
    )
    dp.optimizer.zero_grad()
    dp.criterion(dp.model(data.x), data.y).backward()
    dp.optimizer.step()


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_dp_step_without_noise_or_clipping_equals_the_plain_step(mode):
    # Prepare: one batch of every sample (sample rate 1), so the DP mean gradient is the plain one;
    # per-sample gradients through the square activations must be right for this to hold
    s = make_synthetic(32, 2, 28, 1, seed=1)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    torch.manual_seed(0)
    plain = he_cnn(1, 2, 28, conv_channels=2, hidden=8)
    private = he_cnn(1, 2, 28, conv_channels=2, hidden=8)
    private.load_state_dict(plain.state_dict())
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    nn.CrossEntropyLoss()(plain(data.x), data.y).backward()
    opt.step()

    # Execute
    _private_step(private, data, mode, noise=0.0, clip=1e9)

    # Assert
    for a, b in zip(plain.parameters(), private.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_noisy_clipped_dp_step_updates_every_layer(mode):
    # Prepare
    s = make_synthetic(8, 2, 28, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    torch.manual_seed(0)
    model = he_cnn(1, 2, 28)
    before = [p.detach().clone() for p in model.parameters()]

    # Execute
    _private_step(model, data, mode, noise=1.0, clip=0.25)

    # Assert
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{sum(not c for c in changed)} of {len(changed)} parameter tensors got no DP update"
