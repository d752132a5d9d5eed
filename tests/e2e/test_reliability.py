"""Failures through the real simulation: crashing, poisoned, corrupted and stale hospitals;
pausing, killing and resuming a run (FEDMED_FAULTS drives the fault injection)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e
from conftest import ROOT  # noqa: E402

QUICK = ["data=synthetic", "data.num_samples=300", "train.batch_size=32", "federation.rounds=3"]


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", *overrides]


def run(run_dir: Path, *overrides: str, faults: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDMED_FAULTS": faults}
    return subprocess.run(command(run_dir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_failing_hospitals_are_left_out_and_named(tmp_path):
    done = run(
        tmp_path / "run",
        *QUICK,
        f"federation.hospital_dir={tmp_path / 'h'}",
        "federation.min_hospitals=1",
        faults="0:1:nan,0:2:crash,1:2:corrupt,2:3:stale",
    )
    log = done.stdout + done.stderr
    table = rows(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    assert done.returncode == 0, log[-3000:]
    assert [(int(r["hospitals"]), int(r["dropped"])) for r in table] == [(2, 1), (1, 2), (2, 1)]
    assert "round 1: dropped the reply of hospital 0" in log and "non-finite" in log
    assert "round 2: dropped the reply of hospital 0" in log and "crashes in round 2" in log
    assert "round 2: dropped the reply of hospital 1" in log and "digest mismatch" in log
    assert "round 3: dropped the reply of hospital 2" in log and "stale round number" in log
    assert summary["status"] == "completed" and summary["test"]["auc"] is not None
    assert all(0 < e <= 8.0 for e in summary["epsilon"].values())


def test_too_few_replies_stop_the_run_with_the_last_good_model(tmp_path):
    done = run(
        tmp_path / "run",
        *QUICK,
        f"federation.hospital_dir={tmp_path / 'h'}",
        "encryption=none",
        faults="0:2:crash,1:2:crash",
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    assert done.returncode == 0
    assert summary["status"] == "stopped_early" and summary["rounds_completed"] == 1
    assert "fewer than federation.min_hospitals=2" in summary["stop_reason"]
    assert summary["test"]["auc"] is not None  # the model of round 1, tested


def test_paused_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    common = [*QUICK, f"federation.hospital_dir={tmp_path / 'h'}"]
    assert run(tmp_path / "full", *common).returncode == 0
    paused = run(tmp_path / "part", *common, "federation.stop_after=1")
    assert paused.returncode == 0
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "paused"

    resumed = run(tmp_path / "ignored", f"resume={tmp_path / 'part'}")

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    part = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert part["status"] == "completed" and len(rows(tmp_path / "part")) == 3
    assert part["epsilon"] == full["epsilon"]
    a, b = torch.load(tmp_path / "full" / "model.pt"), torch.load(tmp_path / "part" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_keeps_its_checkpoint_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "FEDMED_FAULTS": ""}
    proc = subprocess.Popen(
        command(run_dir, *QUICK, "federation.rounds=4", f"federation.hospital_dir={tmp_path / 'h'}"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode != 0
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    assert checkpoint["completed_round"] >= 1
    assert len(rows(run_dir)) >= checkpoint["completed_round"]
    assert not list(run_dir.rglob("*.tmp"))
    resumed = run(tmp_path / "x", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(rows(run_dir)) == 4


def test_resume_refuses_a_different_config(tmp_path):
    paused = run(
        tmp_path / "part",
        *QUICK,
        f"federation.hospital_dir={tmp_path / 'h'}",
        "encryption=none",
        "privacy=none",
        "federation.stop_after=1",
    )
    assert paused.returncode == 0

    done = run(tmp_path / "x", f"resume={tmp_path / 'part'}", "federation.num_hospitals=5")

    assert done.returncode == 2
    assert (
        "resume: federation.num_hospitals=5 differs from the run's federation.num_hospitals=3"
        in done.stdout + done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr
