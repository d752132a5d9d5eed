"""Scale, functionally (timings live in scripts/bench_scale.py): 30 hospitals, DP + CKKS, one round."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e
from conftest import ROOT  # noqa: E402


def test_thirty_hospitals_with_dp_and_encryption_complete_a_round(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", f"federation.hospital_dir={tmp_path / 'h'}",
        "data=synthetic", "data.num_samples=1200", "federation.num_hospitals=30", "federation.min_hospitals=30",
        "federation.rounds=1", "train.local_epochs=1", "train.batch_size=16",
        "encryption.fields_per_slot=4", "encryption.field_bits=10", "encryption.global_scale_bits=14",
    ]  # fmt: skip

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert summary["status"] == "completed" and summary["num_hospitals"] == 30
    assert int(row["hospitals"]) == 30 and int(row["dropped"]) == 0
    assert len(summary["epsilon"]) == 30 and all(0 < e <= 8.0 for e in summary["epsilon"].values())
    assert summary["test"]["auc"] is not None
