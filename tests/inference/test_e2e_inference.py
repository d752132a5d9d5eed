"""model=he_cnn through the default private pipeline (DP-SGD + CKKS aggregation), then encrypted inference."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL, run_pipeline

from pipeline.inference.cli import main

pytestmark = pytest.mark.e2e


def test_he_cnn_trains_federated_and_its_model_serves_encrypted_queries(tmp_path):
    # Prepare / Execute: one round of the shrunk default run (3 hospitals, DP-SGD, CKKS), model=he_cnn
    run_dir = tmp_path / "run"
    run_pipeline(run_dir, *SMALL, "federation.rounds=1", "model=he_cnn", f"federation.hospital_dir={tmp_path / 'h'}")
    code = main([str(run_dir), "--split", "test", "--limit", "2", "--encrypted"])

    # Assert
    summary = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / "inference" / "report.json").read_text())
    assert summary["status"] == "completed" and summary["private"] is True and summary["encrypted"] is True
    assert summary["test"]["auc"] is not None
    assert code == 0 and report["agreement"] == 1.0 and report["max_logit_difference"] < 1e-2
