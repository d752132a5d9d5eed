"""Outages and kills through the real simulation: a hospital that is down for rounds catches up
and contributes again; a run SIGKILLed (the whole process tree) at random instants of every phase
resumes to completion, within every budget, with the model of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_reliability import QUICK, REPRODUCIBLE, command, run, summary

from pipeline.reporting.recorder import read_metrics

pytestmark = pytest.mark.e2e


def test_a_hospital_down_for_two_rounds_catches_up_and_contributes_again_from_round_4(tmp_path):
    # Prepare: hospital 1 of 5 answers nothing in rounds 2 and 3 (two evaluations missed); the
    # other four still make a round (secure aggregation against a server and one colluder needs 4 of 5)
    run_dir = tmp_path / "run"
    overrides = [*QUICK, "federation.rounds=4", "federation.num_hospitals=5", f"federation.hospital_dir={tmp_path}/h"]

    # Execute
    done = run(run_dir, *overrides, faults="1:2:down,1:3:down")

    # Assert: rounds 2-3 go on without it; in round 4 it applies aggregates 2 and 3, then trains
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    table = read_metrics(run_dir / "metrics.csv")
    assert [r["hospitals"] for r in table] == [5, 4, 4, 5]
    assert "hospital 1 is down" in log and "out of sync" not in log
    assert table[3]["bytes_down"] > table[2]["bytes_down"]  # the catch-up chain travelled
    privacy = json.loads((run_dir / "privacy.json").read_text())["hospitals"]
    assert [r["round"] for r in privacy["1"]["epsilon_per_round"]] == [1, 4]
    assert [r["round"] for r in privacy["0"]["epsilon_per_round"]] == [1, 2, 3, 4]
    result = summary(run_dir)
    assert result["status"] == "completed" and result["test"]["auc"] > 0.5


def _checkpoint(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return {}


def _finished(run_dir: Path) -> bool:
    """Whether the run wrote its final summary (provenance is added last)."""
    try:
        return "provenance" in summary(run_dir)
    except (OSError, ValueError):
        return False


def _kill_during_rounds(cmd: list[str], run_dir: Path, rng: random.Random, phase: str) -> bool:
    """Start ``cmd``; once a round is under way in ``phase`` (training/evaluating), SIGKILL its whole
    process group after a random delay. False when the run ended before that."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "FEDMED_FAULTS": ""}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    start = _checkpoint(run_dir)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        now = _checkpoint(run_dir)
        progress = now.get("in_progress", {})
        if now != start and progress and bool(progress.get("evaluating")) == (phase == "evaluating"):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        return False
    time.sleep(rng.uniform(0.0, 2.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return True


def test_sigkill_at_random_instants_of_every_phase_resumes_to_the_uninterrupted_model(tmp_path, reproducible_run):
    # bit-equality needs the DP mechanism seeded from the config: the explicit, not-private test mode
    common = [*QUICK, "federation.rounds=3", *REPRODUCIBLE]
    run_dir, rng = tmp_path / "killed", random.Random()
    first = command(run_dir, *common, f"federation.hospital_dir={tmp_path / 'hk'}")
    again = command(tmp_path / "ignored", f"resume={run_dir}")

    # Execute: killed in training, in evaluation, in training, in evaluation, then resumed to the end
    kills = 0
    for i, phase in enumerate(["training", "evaluating", "training", "evaluating"]):
        if _finished(run_dir):
            break
        kills += _kill_during_rounds(first if i == 0 else again, run_dir, rng, phase)
    if not _finished(run_dir):
        resumed = run(tmp_path / "ignored", f"resume={run_dir}")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    refused = run(tmp_path / "ignored", f"resume={run_dir}")

    # Assert: completed, each hospital trained each round once, the same model as without kills;
    # resuming the finished run is refused
    assert kills >= 2
    assert refused.returncode == 2 and "the run is finished (status completed)" in refused.stdout + refused.stderr
    result = summary(run_dir)
    assert result["status"] == "completed"
    assert [r["round"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2, 3]
    privacy = json.loads((run_dir / "privacy.json").read_text())["hospitals"]
    assert all(len(h["history"]) == 1 and h["rounds_trained"] == 3 for h in privacy.values()), privacy
    assert result["epsilon"] == summary(reproducible_run)["epsilon"]
    assert len(result["epsilon"]) == 3 and all(0 < e <= 8.0 for e in result["epsilon"].values())
    a, b = torch.load(reproducible_run / "model.pt"), torch.load(run_dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
