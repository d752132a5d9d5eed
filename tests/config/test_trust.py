"""What a hospital agrees to build from the server's run config (pipeline.config.trust)."""

from __future__ import annotations

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from pipeline.config.trust import check_targets, untrusted_targets
from pipeline.errors import ConfigError


@pytest.mark.parametrize(
    "overrides",
    [(), ("model=resnet18", "strategy=fedadam"), ("model=he_cnn",), ("partition=dirichlet",), ("data=synthetic",)],
)
def test_shipped_configs_as_a_run_sends_them_are_trusted(overrides):
    cfg = OmegaConf.create(OmegaConf.to_yaml(compose_cfg(*overrides)))  # what a hospital parses

    assert untrusted_targets(cfg) == []
    check_targets(cfg)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model", {"_target_": "os.system", "command": "true"}, "model._target_='os.system' is not in its allow-list"),
        # the project's own modules are not all safe to call: this one writes files
        (
            "model",
            {"_target_": "pipeline.reporting.atomic.write_atomic", "path": "/tmp/x", "data": "y"},
            "model._target_='pipeline.reporting.atomic.write_atomic' is not in its allow-list",
        ),
        ("data", {"augment": [{"_target_": "subprocess.run", "args": ["true"]}]}, "data.augment[0]._target_"),
        ("model", {"name": "${oc.env:HOME}"}, "model.name='${oc.env:HOME}' is an interpolation"),
        # a MONAI transform that is not a random augmentation could write the hospital's images
        ("data", {"augment": [{"_target_": "monai.transforms.SaveImage"}]}, "data.augment[0]._target_"),
    ],
)
def test_a_hospital_refuses_code_outside_its_allow_list_and_interpolations(key, value, named):
    cfg = compose_cfg("data=synthetic")
    cfg = OmegaConf.merge(cfg, {key: value})

    with pytest.raises(ConfigError) as err:
        check_targets(cfg, "hospital 2")

    assert str(err.value).startswith("hospital 2 refuses the run config: ") and named in str(err.value)
