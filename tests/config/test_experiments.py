"""Every ``conf/experiment/`` file composes into a valid run, and so does every job of its sweep."""

from __future__ import annotations

import itertools

import pytest
from conftest import ROOT, compose_cfg
from hydra import compose, initialize_config_dir

import pipeline.config.paths  # noqa: F401  (registers the config's resolvers)

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def _sweep(name: str) -> list[list[str]]:
    """The jobs of the experiment's ``hydra.sweeper.params`` (one empty job when it sweeps nothing)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    choices = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_the_experiment_is_a_valid_run(name):
    jobs = _sweep(name)

    for job in jobs:
        cfg = compose_cfg(f"experiment={name}", *job)
        assert cfg.federation.rounds >= 1
    assert jobs


def test_the_model_sweep_pits_the_end_to_end_cnn_against_the_default_over_three_seeds():
    jobs = _sweep("model_sweep")

    models = {compose_cfg("experiment=model_sweep", *job).model._target_ for job in jobs}
    assert len(jobs) == 6 and models == {"models.builders.cnn", "models.builders.scatter_cnn"}
    assert compose_cfg().model._target_ == "models.builders.scatter_cnn"  # the default
    assert compose_cfg("experiment=end_to_end_cnn").model._target_ == "models.builders.cnn"
