"""Resuming a run: its saved config is the config; overrides that contradict it are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.json"
SUMMARY_FILE = "summary.json"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _finished_status(folder: Path) -> str:
    """The status of a finished run (its summary.json final, i.e. with its provenance, which is
    written last, and not paused); "" otherwise.

    A run killed before that (even after its last round or its consortium test) is not finished.
    """
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(summary, dict) or "provenance" not in summary or summary.get("status") == "paused":
        return ""
    return str(summary.get("status", ""))


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config of the run in ``cfg.resume``; refuse overrides that contradict it.

    A run killed before its first checkpoint resumes from round 1 (no hospital trained yet).

    Raises:
        ConfigError: no run there, nothing to resume, a baseline, or an override that differs.
    """
    folder = Path(str(cfg.resume)).expanduser().resolve()
    saved_path = folder / CONFIG_FILE
    if not saved_path.exists():
        raise ConfigError(f"resume={cfg.resume}: no run there ({saved_path} is missing)")
    finished = _finished_status(folder)
    if finished:
        raise ConfigError(f"resume={cfg.resume}: the run is finished (status {finished}); nothing to resume")
    saved = OmegaConf.load(saved_path)
    if saved.federation.mode != "federated":
        raise ConfigError(f"resume={cfg.resume}: only federated runs resume (this one is {saved.federation.mode})")
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in ("resume", "run_dir") or key.startswith("hydra"):
            continue
        new, old = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(saved, key))
        if new != old:
            raise ConfigError(f"resume: {item} differs from the run's {key}={old}; a resumed run keeps its config")
    for key in cfg:  # settings newer than the run (e.g. eval, log) take today's defaults
        if key not in saved:
            saved[key] = cfg[key]
    saved.resume = str(folder)
    saved.run_dir = str(folder)
    return saved
