"""The Flower run config that carries an experiment to the apps: the same in a simulation and under ``flwr run``.

``flwr run --run-config`` takes a TOML file of the keys declared in pyproject's
``[tool.flwr.app.config]``; the whole resolved Hydra config travels as one YAML string
(:data:`pipeline.flower.context.EXPERIMENT_KEY`).
"""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w
from omegaconf import DictConfig, OmegaConf

from pipeline.flower.context import EXPERIMENT_KEY, PUBLIC_CONTEXT_KEY, RUN_DIR_KEY


def run_config(cfg: DictConfig, run_dir: Path, public_context: Path | None) -> dict[str, str]:
    """The run config of an experiment: resolved config, run folder, the server's parameters-only context."""
    return {
        EXPERIMENT_KEY: OmegaConf.to_yaml(cfg),
        RUN_DIR_KEY: str(Path(run_dir).resolve()),
        PUBLIC_CONTEXT_KEY: str(public_context.resolve()) if public_context else "",
    }


def run_config_toml(cfg: DictConfig, run_dir: Path, public_context: Path | None) -> str:
    """:func:`run_config` as the TOML text ``flwr run --run-config`` reads."""
    return tomli_w.dumps(run_config(cfg, run_dir, public_context), multiline_strings=True)


def node_config_arg(values: dict[str, str | int]) -> str:
    """``flower-supernode --node-config`` text: ``key=value`` pairs, strings quoted as TOML strings."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())
