"""MLflow logging (logger=mlflow) of a finished run folder, read back through MLflow's client."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg

from pipeline.outputs.recorder import RunRecorder
from pipeline.outputs.tracking import log_run

mlflow = pytest.importorskip("mlflow")


def test_run_folder_is_logged_to_mlflow(tmp_path):
    cfg = compose_cfg("logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    rec = RunRecorder(tmp_path / "run")
    for rnd, auc in ((1, 0.8), (2, 0.9)):
        rec.add_round(
            {"round": rnd, "hospitals": 3, "val_auc": auc, "epsilon_max": 4.0 * rnd, "test_auc": float("nan")}
        )
    summary = {"test": {"auc": 0.91, "accuracy": 0.85}, "epsilon": {"0": 7.9, "1": 7.8}}
    rec.write_summary(summary)

    run_id = log_run(cfg, tmp_path / "run", summary)

    client = mlflow.tracking.MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params["privacy.epsilon"] == "8.0"
    assert [m.value for m in client.get_metric_history(run_id, "val_auc")] == [0.8, 0.9]
    assert "test_auc" in run.data.metrics and run.data.metrics["test_auc"] == pytest.approx(0.91)
    assert run.data.metrics["final_epsilon_max"] == pytest.approx(7.9)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"summary.json"}
    logged = client.download_artifacts(run_id, "summary.json", str(tmp_path / "download"))
    assert json.loads(open(logged).read()) == json.loads((tmp_path / "run" / "summary.json").read_text())


def test_no_logger_logs_nothing(tmp_path):
    assert log_run(compose_cfg(), tmp_path, {}) is None
