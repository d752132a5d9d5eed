"""MONAI model builders (conf/model/) and the DP-SGD BatchNorm policy."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hydra.utils import instantiate
from torch import nn

from models import builders
from models.compat import disable_inplace, dp_ready, replace_batchnorm
from pipeline.errors import ConfigError

BUILDERS = ["cnn", "resnet18", "densenet121"]
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _count(model: nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 5)], ids=["grey-2", "rgb-5"])
def test_config_builder_returns_logits_of_the_right_shape(name, channels, classes):
    # Prepare: the builder exactly as a run instantiates it from conf/model/<name>.yaml
    cfg = compose_cfg(f"model={name}", "data=synthetic")
    model = instantiate(cfg.model)(in_channels=channels, num_classes=classes, image_size=28).eval()
    x = torch.randn(2, channels, 28, 28)

    # Execute (oneDNN off: its first call sets up every conv shape, seconds for DenseNet's 120)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        logits = model(x)

    # Assert
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()


def test_cnn_parameter_count_is_small():
    # Execute
    model = builders.cnn(1, 2, 28)
    params = sum(p.numel() for p in model.parameters())

    # Assert
    assert 10_000 < params < 500_000


def test_cnn_dropout_and_channels_follow_the_arguments():
    # Execute
    small = builders.cnn(1, 2, 28, channels=(8, 16), strides=(2, 2), dropout=0.2)
    default = builders.cnn(1, 2, 28)

    # Assert
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())
    assert _count(small, (nn.Dropout,)) > 0
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("name", BUILDERS)
def test_shipped_models_hold_no_batchnorm_and_pass_the_refuse_policy(name):
    # Prepare
    cfg = compose_cfg(f"model={name}", "data=synthetic")
    model = instantiate(cfg.model)(in_channels=1, num_classes=2, image_size=28)

    # Execute
    ready = dp_ready(model, "refuse")

    # Assert
    assert ready is model
    assert _count(model, BATCHNORMS) == 0
    assert _count(model, (nn.GroupNorm,)) > 0


@pytest.mark.parametrize("name", BUILDERS)
def test_shipped_models_have_no_inplace_activations(name):
    # Prepare
    cfg = compose_cfg(f"model={name}", "data=synthetic")

    # Execute
    model = instantiate(cfg.model)(in_channels=1, num_classes=2, image_size=28)

    # Assert: in-place ops hide activations from Opacus's hooks
    assert not any(getattr(m, "inplace", False) is True for m in model.modules())


def test_batchnorm_resnet_is_refused_with_a_batchnorm_reason():
    # Prepare
    model = builders.resnet18(1, 2, 28, norm="batch")
    assert _count(model, BATCHNORMS) > 0

    # Execute
    with pytest.raises(ConfigError) as err:
        dp_ready(model, "refuse")

    # Assert
    assert "BatchNorm" in str(err.value)
    assert "privacy.batchnorm=convert" in str(err.value)


def test_batchnorm_resnet_is_converted_by_the_convert_policy():
    # Prepare
    model = builders.resnet18(1, 2, 28, norm="batch")

    # Execute
    fixed = dp_ready(model, "convert")

    # Assert
    assert _count(fixed, BATCHNORMS) == 0
    assert _count(fixed, (nn.GroupNorm,)) > 0
    assert dp_ready(fixed, "refuse") is fixed
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        assert fixed.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_replace_batchnorm_swaps_every_layer_for_the_given_norm():
    # Prepare
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32))
    )

    # Execute
    out = replace_batchnorm(model, ("group", {"num_groups": 8}))

    # Assert
    assert out is model
    assert _count(model, BATCHNORMS) == 0
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(g.num_groups, g.num_channels) for g in groups] == [(8, 16), (8, 32)]


def test_disable_inplace_turns_off_every_inplace_flag():
    # Prepare
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Sequential(nn.Dropout(inplace=True), nn.ELU(inplace=True)))

    # Execute
    disable_inplace(model)

    # Assert
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == [False, False, False]
