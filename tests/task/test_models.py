"""MONAI model builders (conf/model/) and the DP-SGD BatchNorm policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from torch import nn

from models import builders
from models.compat import disable_inplace, dp_ready, replace_batchnorm
from models.scattering import Scattering
from pipeline.errors import ConfigError
from pipeline.task.model import build_model, get_flat, model_builder, save_model, set_flat

BUILDERS = ["cnn", "resnet18", "densenet121"]  # each with a 3D form
BUILDERS_2D = [*BUILDERS, "scatter_cnn"]
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _count(model: nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", BUILDERS_2D)
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 5)], ids=["grey-2", "rgb-5"])
def test_config_builder_returns_logits_of_the_right_shape(name, channels, classes):
    # Prepare: the builder exactly as a run instantiates it from conf/model/<name>.yaml
    cfg = compose_cfg(f"model={name}", "data=synthetic")
    model = model_builder(cfg)(in_channels=channels, num_classes=classes, image_size=28).eval()
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


@pytest.mark.parametrize("name", BUILDERS_2D)
def test_shipped_models_hold_no_batchnorm_and_pass_the_refuse_policy(name):
    # Prepare
    cfg = compose_cfg(f"model={name}", "data=synthetic")
    model = model_builder(cfg)(in_channels=1, num_classes=2, image_size=28)

    # Execute
    ready = dp_ready(model, "refuse")

    # Assert
    assert ready is model
    assert _count(model, BATCHNORMS) == 0
    assert _count(model, (nn.GroupNorm,)) > 0


@pytest.mark.parametrize("name", BUILDERS_2D)
def test_shipped_models_have_no_inplace_activations(name):
    # Prepare
    cfg = compose_cfg(f"model={name}", "data=synthetic")

    # Execute
    model = model_builder(cfg)(in_channels=1, num_classes=2, image_size=28)

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


# --- 3D ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILDERS)
def test_builders_have_a_3d_form_from_the_same_config(name):
    # Prepare: 16^3 volumes (DenseNet upsamples to 64^3)
    cfg = compose_cfg(f"model={name}", "data=manifest", "data.manifest=m.csv", "data.spatial_dims=3")
    model = build_model(cfg, 1, 3, 16)
    ready = dp_ready(model, "refuse")

    # Execute
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        logits = model.eval()(torch.randn(2, 1, 16, 16, 16))

    # Assert: 3D convolutions, GroupNorm, no BatchNorm (DP-ready)
    assert logits.shape == (2, 3)
    assert _count(model, (nn.Conv3d,)) > 0 and _count(model, (nn.Conv2d,)) == 0
    assert _count(model, BATCHNORMS) == 0 and ready is model


def test_the_scattering_model_keeps_its_filters_out_of_the_shared_state_and_refuses_volumes():
    # Prepare
    cfg = compose_cfg("model=scatter_cnn", "data=synthetic")
    model = build_model(cfg, 1, 2, 28)

    # Execute
    flat = get_flat(model)

    # Assert: only trainable parameters travel; the wavelet filters are rebuilt by every party
    assert len(flat) == sum(p.numel() for p in model.parameters()) == 111458
    assert any(b.numel() > 0 for b in model.buffers())
    assert not any(p.requires_grad is False for p in model.parameters())
    volumes = compose_cfg("model=scatter_cnn", "data=manifest", "data.manifest=m.csv", "data.spatial_dims=3")
    with pytest.raises(ConfigError, match="has no 3D form"):
        build_model(volumes, 1, 2, 16)
    with pytest.raises(ConfigError, match="multiple of 2\\^J=4"):
        build_model(cfg, 1, 2, 30)


@pytest.mark.parametrize(("channels", "size", "J", "L"), [(1, 28, 2, 8), (2, 32, 3, 4), (1, 64, 2, 8)])
def test_the_batched_scattering_equals_kymatios_own(channels, size, J, L):  # noqa: N803
    # Prepare: kymatio's reference forward (path by path) on the same images
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    images = torch.rand(6, channels, size, size, generator=torch.Generator().manual_seed(0))
    reference = ScatteringTorch2D(J=J, shape=(size, size), L=L)(images).reshape(6, -1, size >> J, size >> J)

    # Execute
    ours = Scattering(channels, size, J, L)(images)

    # Assert: same coefficients in the same order
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4)


def test_the_scattering_has_finite_second_order_gradients_even_on_a_blank_image():
    # Prepare: a blank image has zero wavelet responses (|z| at 0); inversion attacks differentiate twice
    layer = Scattering(1, 28)
    x = torch.zeros(2, 1, 28, 28, requires_grad=True)

    # Execute
    (g,) = torch.autograd.grad(layer(x).square().sum() + layer(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)

    # Assert
    assert torch.isfinite(g).all() and torch.isfinite(gg).all()
    assert g.abs().sum() > 0


def test_a_builder_without_a_3d_form_is_refused():
    cfg = compose_cfg("model=cnn", "data=manifest", "data.manifest=m.csv", "data.spatial_dims=3")
    cfg.model = {"_target_": f"{__name__}._flat_builder", "_partial_": True}

    with pytest.raises(ConfigError, match="has no 3D form"):
        build_model(cfg, 1, 2, 16)


def _flat_builder(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Linear(in_channels * image_size * image_size, num_classes)


# --- warm starts ---------------------------------------------------------------------------------
def _saved(tmp_path, seed: int, *overrides: str):
    cfg = compose_cfg("model=cnn", "data=synthetic", f"seed={seed}", *overrides)
    model = build_model(cfg, 1, 2, 28)
    save_model(model, tmp_path / "pretrained.pt")
    return model, tmp_path / "pretrained.pt"


def test_checkpoint_gives_its_weights_to_every_party(tmp_path):
    # Prepare: weights from another seed (as if pretrained elsewhere)
    pretrained, path = _saved(tmp_path, seed=7)
    cfg = compose_cfg("model=cnn", "data=synthetic", f"model.checkpoint={path}")

    # Execute: two parties build the initial model
    a, b = build_model(cfg, 1, 2, 28), build_model(cfg, 1, 2, 28)

    # Assert
    np.testing.assert_array_equal(get_flat(a), get_flat(pretrained))
    np.testing.assert_array_equal(get_flat(a), get_flat(b))
    assert not np.array_equal(get_flat(a), get_flat(build_model(compose_cfg("model=cnn", "data=synthetic"), 1, 2, 28)))


def test_checkpoint_with_another_head_keeps_the_seeded_head(tmp_path, caplog):
    # Prepare: pretrained for 5 classes, trained here for 2
    cfg5 = compose_cfg("model=cnn", "data=synthetic", "seed=7")
    torch.save(build_model(cfg5, 1, 5, 28).state_dict(), tmp_path / "five.pt")
    cfg = compose_cfg("model=cnn", "data=synthetic", f"model.checkpoint={tmp_path / 'five.pt'}")

    # Execute
    model = build_model(cfg, 1, 2, 28)

    # Assert: the body is the checkpoint's, the head the seeded one
    seeded = build_model(compose_cfg("model=cnn", "data=synthetic"), 1, 2, 28).state_dict()
    state, five = model.state_dict(), torch.load(tmp_path / "five.pt")
    assert torch.equal(state["net.layer_0.conv.unit0.conv.weight"], five["net.layer_0.conv.unit0.conv.weight"])
    assert torch.equal(state["final.1.weight"], seeded["final.1.weight"])
    assert "final.1.weight" in caplog.text


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("not a checkpoint"), "not a readable state_dict"),
        (lambda p: torch.save(builders.resnet18(1, 2, 28).state_dict(), p), "does not fit"),
    ],
    ids=["missing", "garbage", "other-model"],
)
def test_bad_checkpoints_are_config_errors(tmp_path, make, fragment):
    path = tmp_path / "w.pt"
    make(path)
    cfg = compose_cfg("model=cnn", "data=synthetic", f"model.checkpoint={path}")

    with pytest.raises(ConfigError, match=fragment) as err:
        build_model(cfg, 1, 2, 28)
    assert "\n" not in str(err.value)


def test_freeze_stops_gradients_under_the_prefixes():
    # Execute
    cfg = compose_cfg("model=cnn", "data=synthetic", "model.freeze=[net]")
    model = build_model(cfg, 1, 2, 28)

    # Assert: the convolutional body frozen, the head trains
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("net.")}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("final."))


@pytest.mark.parametrize(
    ("freeze", "fragment"), [("[nett]", "names no module"), ("[net,final]", "freezes every parameter")]
)
def test_bad_freeze_prefixes_are_config_errors(freeze, fragment):
    cfg = compose_cfg("model=cnn", "data=synthetic", f"model.freeze={freeze}")

    with pytest.raises(ConfigError, match=fragment):
        build_model(cfg, 1, 2, 28)


def test_frozen_parameters_stay_out_of_the_flat_vector():
    # Prepare
    cfg = compose_cfg("model=cnn", "data=synthetic", "model.freeze=[net]")
    model, other = build_model(cfg, 1, 2, 28), build_model(cfg, 1, 2, 28)
    body = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("net.")}

    # Execute: what travels is the head only; loading a vector leaves the body alone
    flat = get_flat(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    set_flat(other, flat)

    # Assert
    assert len(flat) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    np.testing.assert_array_equal(get_flat(other), flat)
    assert all(torch.equal(p, body[n] + 1.0) for n, p in other.named_parameters() if n.startswith("net."))
