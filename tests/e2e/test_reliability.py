"""Failures through the real simulation: crashing, poisoned, corrupted and stale hospitals;
pausing and resuming a run (FEDMED_FAULTS drives the fault injection). Killed runs resuming:
test_rejoin_and_kill.py (SIGKILL at random instants) and test_console_and_interrupts.py (SIGTERM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, REPRODUCIBLE, ROOT
from omegaconf import OmegaConf

from pipeline.reporting.recorder import read_metrics
from pipeline.secagg import aggregates
from pipeline.task import sites
from pipeline.task.model import build_model, get_flat
from pipeline.task.training import evaluate

pytestmark = pytest.mark.e2e


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", *overrides]


def run(run_dir: Path, *overrides: str, faults: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDMED_FAULTS": faults}
    return subprocess.run(command(run_dir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_failing_hospitals_are_left_out_named_and_too_few_stop_the_run_with_the_last_good_model(tmp_path):
    # Prepare: round 1 a NaN update and a stale reply, round 2 a crash and a corrupted ciphertext,
    # round 3 every hospital crashes
    run_dir = tmp_path / "run"
    faults = "0:1:nan,2:1:stale,0:2:crash,1:2:corrupt,0:3:crash,1:3:crash,2:3:crash"

    # Execute
    done = run(
        run_dir, *QUICK, "federation.rounds=3", f"federation.hospital_dir={tmp_path / 'h'}",
        "federation.min_hospitals=1", "encryption.colluders=0", faults=faults,
    )  # fmt: skip

    # Assert: each bad reply is named with its cause and left out
    log = done.stdout + done.stderr
    table = read_metrics(run_dir / "metrics.csv")
    result = summary(run_dir)
    assert done.returncode == 0, log[-3000:]
    assert [(r["hospitals"], r["dropped"]) for r in table] == [(1, 2), (1, 2)]
    assert "round 1: dropped the reply of hospital 0" in log and "non-finite" in log
    assert "round 1: dropped the reply of hospital 2" in log and "stale round number 0 (current 1)" in log
    assert "round 2: dropped the reply of hospital 0" in log and "crashes in round 2" in log
    assert "round 2: dropped the reply of hospital 1" in log and "digest mismatch" in log
    # round 3 has no usable update: the run stops with the model of round 2, and that model is tested
    assert result["status"] == "stopped_early" and result["rounds_completed"] == 2
    assert "round 3: 0 usable update(s), fewer than federation.min_hospitals=1" in result["stop_reason"]
    assert len(aggregates.load_all(run_dir)) == 2
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = build_model(cfg, 1, 2, 28)
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    assert result["test"]["auc"] == pytest.approx(evaluate(model, sites.test_dataset(cfg), torch.device("cpu"))["auc"])
    assert np.abs(get_flat(model) - get_flat(build_model(cfg, 1, 2, 28))).max() > 1e-4
    # every hospital trained at least once (a NaN update is charged too), none beyond its budget
    assert sorted(result["epsilon"]) == ["0", "1", "2"] and all(0 < e <= 8.0 for e in result["epsilon"].values())


def test_paused_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, reproducible_run):
    # bit-equality needs the DP mechanism seeded from the config: the explicit, not-private test mode
    common = [*QUICK, "federation.rounds=3", f"federation.hospital_dir={tmp_path / 'h'}", *REPRODUCIBLE]
    paused = run(tmp_path / "part", *common, "federation.stop_after=1")
    assert paused.returncode == 0
    assert summary(tmp_path / "part")["status"] == "paused"

    refused = run(tmp_path / "x", f"resume={tmp_path / 'part'}", "federation.num_hospitals=5")
    resumed = run(tmp_path / "ignored", f"resume={tmp_path / 'part'}")

    assert refused.returncode == 2
    assert (
        "resume: federation.num_hospitals=5 differs from the run's federation.num_hospitals=3"
        in refused.stdout + refused.stderr
    )
    assert "Traceback" not in refused.stdout + refused.stderr
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full, part = summary(reproducible_run), summary(tmp_path / "part")
    assert full["private"] is False and full["randomness"] == ["reproducible"]
    assert part["status"] == "completed" and len(read_metrics(tmp_path / "part" / "metrics.csv")) == 3
    assert part["epsilon"] == full["epsilon"] and len(full["epsilon"]) == 3
    a, b = torch.load(reproducible_run / "model.pt"), torch.load(tmp_path / "part" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
