"""Shared test helpers: the repository paths, the real data folder and Hydra config composition.

``compose_cfg`` is a plain function (``from conftest import compose_cfg``) and also a fixture of the
same name, so a test can use either form.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# The real data sets live next to the repository (../shared/data); always present in CI.
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def compose_raw(*overrides: str) -> DictConfig:
    """The Hydra composition of ``conf/config.yaml`` with ``overrides``, not validated.

    Hydra's own errors (unknown key, unknown group option) surface here.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_cfg(*overrides: str, validated: bool = True) -> DictConfig:
    """Compose the experiment config with ``overrides`` and (by default) run ``pipeline.config.validate``.

    ``run_dir`` is null in the composed config unless an override sets it.
    """
    cfg = compose_raw(*overrides)
    if not validated:
        return cfg
    from pipeline.config import validate

    return validate(cfg)


@pytest.fixture(name="compose_cfg")
def _compose_cfg_fixture():
    """The :func:`compose_cfg` function, for tests that prefer a fixture to an import."""
    return compose_cfg


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding the real MedMNIST files (pneumoniamnist.npz)."""
    return DATA_ROOT
