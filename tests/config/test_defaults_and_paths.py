"""One source of defaults (conf/), the path keys, and finding conf/ from an installed package."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import CONF_DIR, compose_raw
from omegaconf import MISSING, OmegaConf

from pipeline.config import compose, conf_dir
from pipeline.config.paths import is_path_key, override_keys
from pipeline.config.schema import GROUP_SCHEMAS, OPTIONAL_GROUP_SCHEMAS
from pipeline.config.validate import complete
from pipeline.errors import ConfigError

SCHEMAS = {**GROUP_SCHEMAS, **OPTIONAL_GROUP_SCHEMAS}


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_schemas_hold_types_not_defaults(group):
    # Execute
    fields = dataclasses.fields(SCHEMAS[group])

    # Assert: a field is either set by the group's YAML (MISSING) or not applicable (None)
    for f in fields:
        assert f.default in (MISSING, None), f"{group}.{f.name} has a default in the schema: {f.default!r}"


def test_a_yaml_option_that_leaves_a_key_unset_is_refused_with_its_name():
    # Prepare: the privacy group without its epsilon (as if a YAML file forgot it)
    cfg = OmegaConf.create(OmegaConf.to_container(compose_raw(), resolve=True))
    del cfg.privacy["epsilon"]

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"privacy\.epsilon not set"):
        complete(cfg)


def test_a_key_the_schema_does_not_know_is_refused():
    cfg = OmegaConf.create(OmegaConf.to_container(compose_raw(), resolve=True))
    cfg.train["workers"] = 0  # removed: nothing read it

    with pytest.raises(ConfigError, match="workers"):
        complete(cfg)


def test_the_defaults_file_values_reach_the_config():
    cfg = compose()

    assert cfg.federation.rounds == 8 and cfg.privacy.max_grad_norm == 0.25  # from conf/, not a schema
    assert cfg.data.root == cfg.paths.data and cfg.federation.hospital_dir == cfg.paths.hospitals


def test_paths_group_moves_every_location_and_data_root_still_overrides():
    cfg = compose("paths.data=/srv/x", "paths.hospitals=/srv/h")
    assert cfg.data.root == "/srv/x" and cfg.federation.hospital_dir == "/srv/h"

    cfg = compose("data.root=/srv/y")
    assert cfg.data.root == "/srv/y"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("data.root", True),
        ("paths.data", True),
        ("paths", True),
        ("federation.hospital_dir", True),
        ("run_dir", True),
        ("hydra.sweep.dir", True),
        ("data.rooted", False),
        ("privacy.epsilon", False),
        ("data.flag", False),
    ],
)
def test_is_path_key(key, expected):
    assert is_path_key(key) is expected


def test_multirun_folder_names_leave_out_every_path_key():
    # Execute: Hydra's own config, as hydra.main sees it
    cfg = compose_raw("data.root=/a", "seed=3")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = hydra_compose("config", overrides=["data.root=/a", "seed=3"], return_hydra_config=True)

    # Assert
    assert list(full.hydra.job.config.override_dirname.exclude_keys) == override_keys()
    assert {"data.root", "paths.data", "federation.hospital_dir", "run_dir"} <= set(override_keys())
    assert cfg.seed == 3


def test_conf_dir_is_the_checkout_folder_in_a_checkout():
    assert conf_dir() == CONF_DIR.resolve()
