"""Experiment tracking of a finished run folder: MLflow (logger=mlflow), read back through MLflow's
client, and TensorBoard (logger=tensorboard), read back from the event file with TensorBoard's
EventAccumulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg

from pipeline.errors import ConfigError
from pipeline.reporting.recorder import RunRecorder
from pipeline.reporting.tracking import log_run

SUMMARY = {"test": {"auc": 0.91, "accuracy": 0.85}, "epsilon": {"0": 7.9, "1": 7.8}}


def small_run(run_dir: Path) -> dict:
    """A run folder with two rounds of metrics.csv and a summary.json; returns the summary."""
    rec = RunRecorder(run_dir)
    for rnd, auc in ((1, 0.8), (2, 0.9)):
        rec.add_round(
            {"round": rnd, "hospitals": 3, "val_auc": auc, "epsilon_max": 4.0 * rnd, "test_auc": float("nan")}
        )
    rec.write_summary(SUMMARY)
    return SUMMARY


def test_run_folder_is_logged_to_mlflow(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    cfg = compose_cfg("logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    summary = small_run(tmp_path / "run")

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


def read_events(log_dir: Path):
    """TensorBoard's EventAccumulator over the one event file in ``log_dir``, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_run_folder_is_logged_to_tensorboard_in_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = compose_cfg("logger=tensorboard")
    summary = small_run(tmp_path / "run")

    log_dir = log_run(cfg, tmp_path / "run", summary)

    assert log_dir == str(tmp_path / "run" / "tensorboard")
    events = read_events(Path(log_dir))
    scalars = events.Tags()["scalars"]
    assert [(e.step, e.value) for e in events.Scalars("round/val_auc")] == [
        (1, pytest.approx(0.8)),
        (2, pytest.approx(0.9)),
    ]
    assert [(e.step, e.value) for e in events.Scalars("round/epsilon_max")] == [(1, 4.0), (2, 8.0)]
    assert "round/test_auc" not in scalars  # NaN in every round: not logged
    assert [e.value for e in events.Scalars("final/test_auc")] == [pytest.approx(0.91)]
    assert [e.step for e in events.Scalars("final/final_epsilon_max")] == [2]
    assert events.Scalars("final/final_epsilon_max")[0].value == pytest.approx(7.9)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    privacy:" in config and "epsilon: 8.0" in config


def test_tensorboard_tracking_uri_is_a_folder_shared_by_runs(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = compose_cfg("logger=tensorboard", f"logger.tracking_uri={tmp_path / 'tb'}")
    summary = small_run(tmp_path / "run_a")

    log_dir = log_run(cfg, tmp_path / "run_a", summary)

    assert log_dir == str(tmp_path / "tb" / "run_a")
    assert [e.value for e in read_events(Path(log_dir)).Scalars("final/test_accuracy")] == [pytest.approx(0.85)]
    assert not (tmp_path / "run_a" / "tensorboard").exists()


def test_tensorboard_missing_is_one_config_error_naming_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    summary = small_run(tmp_path / "run")

    with pytest.raises(ConfigError) as err:
        log_run(compose_cfg("logger=tensorboard"), tmp_path / "run", summary)

    assert str(err.value) == 'logger=tensorboard needs TensorBoard: pip install -e ".[tensorboard]"'


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_missing_logger_package_is_refused_before_the_run(monkeypatch, backend):
    import importlib.util

    from pipeline.reporting.tracking import check_backend

    cfg = compose_cfg(f"logger={backend}")
    check_backend(cfg)  # installed here (the test extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    with pytest.raises(ConfigError, match=rf"logger={backend} needs .*pip install"):
        check_backend(cfg)
    check_backend(compose_cfg("logger=none"))
