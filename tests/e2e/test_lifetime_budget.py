"""A lifetime cap through the real simulation: two studies on the same simulated hospitals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_pipeline

pytestmark = pytest.mark.e2e


def test_hospitals_capped_at_ten_take_one_epsilon_8_study_and_refuse_the_next(tmp_path):
    # Prepare: the quick experiment (2 hospitals, epsilon 8), hospitals' ledgers in one shared folder
    ledgers = tmp_path / "ledgers"
    common = [
        "experiment=quick",
        "encryption=none",
        "privacy.max_lifetime_epsilon=10",
        f"privacy.lifetime_dir={ledgers}",
    ]
    common.append(f"federation.hospital_dir={tmp_path / 'h'}")

    # Execute
    first = run_pipeline(tmp_path / "first", *common)
    second = run_pipeline(tmp_path / "second", *common, check=False)

    # Assert: the first study ran and was charged; the second is refused at start, with the budget left
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert first.returncode == 0 and summary["status"] == "completed"
    spent = max(summary["epsilon"].values())
    assert 7.5 < spent <= 8.0
    out = second.stdout + second.stderr
    assert second.returncode == 1 and "Traceback" not in out
    assert "only 0 hospital(s) joined" in out and "refuses" in out
    assert f"budget left: {10 - spent:.3f} of 10" in out
    assert not (tmp_path / "second" / "summary.json").exists()
    listing = subprocess.run(
        [sys.executable, "-m", "pipeline.privacy.lifetime", str(ledgers)], cwd=ROOT, capture_output=True, text=True
    )
    assert listing.returncode == 0 and "lifetime: 1 study," in listing.stdout
