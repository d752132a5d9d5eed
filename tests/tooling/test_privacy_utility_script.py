"""``scripts/privacy_utility.py --seeds``: one run per privacy setting and seed, in one multirun."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

import pipeline.config.paths  # noqa: F401  (registers the config's resolvers)


def _script():
    spec = importlib.util.spec_from_file_location("privacy_utility", ROOT / "scripts" / "privacy_utility.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jobs(command: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``command``: the experiment's sweep params, then the command line's."""
    overrides = command[command.index("pipeline.run") + 2 :]  # after "-m pipeline.run -m"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[o for o in overrides if "," not in o], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    swept = [o for o in overrides if "," in o]
    parsed = OverridesParser.create().parse_overrides(params + swept)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def test_seeds_make_one_run_per_privacy_setting_and_seed(tmp_path: Path):
    command = _script().sweep_command(tmp_path, [0, 1, 2], ["data.root=../shared/data"])

    jobs = _jobs(command)

    def value(job: list[str], key: str) -> str:
        return next(o for o in job if o.startswith(key + "="))

    settings = {(value(job, "privacy"), value(job, "seed")) for job in jobs}
    assert len(jobs) == 12 and len(settings) == 12
    assert {p for p, _ in settings} == {"privacy=eps1", "privacy=eps3", "privacy=eps8", "privacy=none"}
    assert {s for _, s in settings} == {"seed=0", "seed=1", "seed=2"}
    assert f"hydra.sweep.dir={tmp_path / 'runs'}" in command


def test_without_seeds_the_sweep_keeps_the_configs_seed(tmp_path: Path):
    command = _script().sweep_command(tmp_path, None, [])

    assert not any(o.startswith("seed=") for o in command)
    assert len(_jobs(command)) == 4


def test_a_seed_override_is_refused_in_favour_of_seeds(tmp_path: Path):
    with pytest.raises(ValueError, match="--seeds"):
        _script().sweep_command(tmp_path, None, ["seed=3"])
