"""Composing the experiment config outside ``hydra.main``: key generation, run configs, benchmarks, tests.

:func:`conf_dir` finds ``conf/`` in a source checkout or, for a non-editable install, the copy
shipped inside the package (``pipeline/conf``), so every entry point works without the source tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig

CONFIG_NAME = "config"


def conf_dir() -> Path:
    """The folder holding ``config.yaml`` and the config groups."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / f"{CONFIG_NAME}.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("pipeline") / "conf"))
    if (installed / f"{CONFIG_NAME}.yaml").is_file():
        return installed
    raise FileNotFoundError(f"no {CONFIG_NAME}.yaml in {checkout} or {installed}: reinstall the package")


def compose(*overrides: str, validated: bool = True) -> DictConfig:
    """The config ``python -m pipeline.run <overrides>`` would run, validated unless ``validated=False``.

    Raises:
        ConfigError: a value :func:`pipeline.config.validate` refuses.
        hydra.errors.ConfigCompositionException: an unknown key or group option.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.config import paths  # noqa: F401  (registers the config's resolvers)

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides))
    if not validated:
        return cfg
    from pipeline.config.validate import validate

    return validate(cfg)
