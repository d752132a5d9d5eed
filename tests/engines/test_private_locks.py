"""A run locks its private folder (simulation) or workspace (deployment) and records itself in owner.json."""

from __future__ import annotations

import os

import pytest
from conftest import DATA_ROOT, compose_cfg
from fakes import held_elsewhere

from pipeline.engines import deployment, simulation
from pipeline.engines.workspace import private_lock, read_owner
from pipeline.errors import RunFailed
from pipeline.reporting.lock import read_holder


def _cfg(tmp_path, *overrides: str):
    return compose_cfg(f"data.root={DATA_ROOT}", f"federation.hospital_dir={tmp_path / 'h'}", *overrides)


@pytest.mark.parametrize(
    "engine, inner, folder_of, overrides",
    [
        (simulation.run_federated, "_simulate", simulation.hospital_folder, ()),
        (deployment.run_local_deployment, "_deploy", deployment.workspace_for, ("deployment=local",)),
    ],
)
def test_the_private_folder_is_locked_for_the_run_and_names_its_owner(
    tmp_path, monkeypatch, engine, inner, folder_of, overrides
):
    cfg, run = _cfg(tmp_path, *overrides), tmp_path / "run"
    folder = folder_of(cfg, run)
    (folder / "stale").mkdir(parents=True)  # an earlier run's
    seen = {}

    def body(cfg, run_dir, private, *_resume):
        seen["holder"] = read_holder(private_lock(private).lock_file)
        seen["owner"] = read_owner(private)
        seen["stale"] = (private / "stale").exists()
        return {"status": "completed"}

    monkeypatch.setattr(engine.__module__ + "." + inner, body)
    assert engine(cfg, run) == {"status": "completed"}

    assert seen["holder"].pid == os.getpid() and seen["owner"]["run_dir"] == str(run.resolve())
    assert not seen["stale"] and not private_lock(folder).lock_file.exists()


@pytest.mark.parametrize(
    "engine, folder_of, overrides",
    [
        (simulation.run_federated, simulation.hospital_folder, ()),
        (deployment.run_local_deployment, deployment.workspace_for, ("deployment=local",)),
    ],
)
def test_a_private_folder_held_by_another_run_is_refused_and_kept(tmp_path, engine, folder_of, overrides):
    cfg, run = _cfg(tmp_path, *overrides), tmp_path / "run"
    folder = folder_of(cfg, run)
    (folder / "state").mkdir(parents=True)
    with (
        held_elsewhere(folder, beside=True) as proc,
        pytest.raises(RunFailed, match=f"is in use by another run \\(pid {proc.pid} "),
    ):
        engine(cfg, run)

    assert (folder / "state").is_dir()  # not removed as a stale folder
