"""A run's outputs: metrics.csv, summary.json, the curves plot, saved aggregates, and the metrics."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.console import summary_table
from pipeline.reporting.plots import PLOT_FILE, plot_rounds
from pipeline.reporting.recorder import COLUMNS, METRICS_FILE, SUMMARY_FILE, RunRecorder, read_metrics
from pipeline.secagg import aggregates
from pipeline.secagg.aggregates import Aggregate
from pipeline.secagg.wire import Payload, digest
from pipeline.task.metrics import classification_metrics, matthews_corrcoef


def _row(rnd: int) -> dict:
    return {
        "round": rnd,
        "hospitals": 3,
        "train_loss": 0.5 / rnd,
        "val_loss": 0.6 / rnd,
        "val_auc": 0.7 + 0.01 * rnd,
        "test_auc": 0.65 + 0.01 * rnd,
        "epsilon_max": 1.5 * rnd,
        "bytes_up": 650_000,
        "bytes_down": 650_000,
        "dropped": 0,
    }


# ---------------------------------------------------------------- RunRecorder


def test_metrics_csv_has_the_header_and_one_row_per_round(tmp_path):
    # Prepare
    recorder = RunRecorder(tmp_path / "run")

    # Execute
    recorder.add_round(_row(1))
    recorder.add_round({**_row(2), "not_a_column": 99})

    # Assert
    with open(tmp_path / "run" / METRICS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [r["round"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_loss"]) == pytest.approx(0.25)
    assert float(rows[0]["epsilon_max"]) == pytest.approx(1.5)
    assert rows[0]["test_accuracy"] == ""  # columns a row lacks stay empty
    assert "not_a_column" not in rows[1]


def test_metrics_csv_floats_keep_six_significant_digits(tmp_path):
    # Prepare
    recorder = RunRecorder(tmp_path)

    # Execute
    recorder.add_round({"round": 1, "val_auc": 0.123456789, "seconds": 12345.678})

    # Assert
    with open(tmp_path / METRICS_FILE, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["val_auc"] == "0.123457"
    assert row["seconds"] == "12345.7"


def test_summary_json_turns_nan_and_inf_into_null(tmp_path):
    # Prepare
    recorder = RunRecorder(tmp_path)
    summary = {
        "test": {"auc": float("nan"), "accuracy": 0.9},
        "epsilon": {"0": 2.5, "1": float("inf")},
        "curve": [1.0, float("-inf")],
        "mode": "federated",
    }

    # Execute
    path = recorder.write_summary(summary)

    # Assert
    assert path == tmp_path / SUMMARY_FILE
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["test"] == {"auc": None, "accuracy": 0.9}
    assert data["epsilon"] == {"0": 2.5, "1": None}
    assert data["curve"] == [1.0, None]
    assert data["mode"] == "federated"


def test_plot_writes_a_png(tmp_path):
    # Prepare
    recorder = RunRecorder(tmp_path)
    for rnd in (1, 2, 3):
        recorder.add_round(_row(rnd))
    recorder.add_round({"round": 4, "val_auc": float("nan")})  # gaps are skipped, not plotted

    # Execute
    path = plot_rounds(recorder.rows, tmp_path / PLOT_FILE, "test run")

    # Assert
    assert path == tmp_path / PLOT_FILE
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_plot_without_rounds_writes_nothing(tmp_path):
    # Execute
    path = plot_rounds(RunRecorder(tmp_path).rows, tmp_path / PLOT_FILE)

    # Assert
    assert path is None
    assert not (tmp_path / PLOT_FILE).exists()


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    # Prepare
    target = tmp_path / "a.txt"
    target.write_text("old")

    # Execute
    write_atomic(target, "new")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")

    # Assert
    assert target.read_text() == "new"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_private_write_creates_owner_only_file_and_folder(tmp_path):
    # Execute
    path = write_atomic(tmp_path / "keys" / "secret.ctx", b"k", private=True)

    # Assert
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_public_write_follows_the_umask(tmp_path):
    # Execute
    path = write_atomic(tmp_path / "metrics.csv", "a")

    # Assert: 0666 minus the usual umask 022, not the temporary file's 0600
    assert path.stat().st_mode & 0o777 == 0o666 & ~0o022


def test_read_metrics_returns_numbers_and_none_for_gaps(tmp_path):
    # Prepare
    recorder = RunRecorder(tmp_path)
    recorder.add_round(_row(1))
    recorder.add_round({"round": 2, "hospitals": 2, "val_auc": float("nan")})

    # Execute
    rows = read_metrics(tmp_path / METRICS_FILE)

    # Assert
    assert rows[0]["round"] == 1 and isinstance(rows[0]["round"], int)
    assert rows[0]["val_auc"] == pytest.approx(0.71)
    assert rows[1]["val_auc"] is None and rows[1]["test_auc"] is None
    assert read_metrics(tmp_path / "absent.csv") == []


def test_summary_table_lists_the_final_numbers():
    # Prepare
    summary = {
        "run_dir": "outputs/x",
        "mode": "federated",
        "num_hospitals": 3,
        "rounds_completed": 5,
        "test": {"auc": 0.91234, "accuracy": 0.8, "mcc": None},
        "epsilon": {"0": 7.5, "1": 7.9},
        "epsilon_target": 8.0,
        "bytes_per_param_up": 6.74,
    }

    # Execute
    table = summary_table(summary)

    # Assert
    assert "0.9123" in table and "7.900" in table and "6.740" in table
    assert "test mcc" not in table
    assert "3 hospitals, 5 rounds" in table


# ---------------------------------------------------------------- aggregates on disk


def test_plain_aggregate_save_load_round_trip(tmp_path):
    # Prepare
    values = np.random.default_rng(0).normal(size=1234).astype(np.float32)
    agg = Aggregate(round=3, payload=Payload(values=values), total_weight=2.75, count=3)

    # Execute
    path = aggregates.save(tmp_path, agg)
    back = aggregates.load(path)

    # Assert
    assert path.name == "round_003.agg" and path.parent.name == aggregates.AGGREGATES_DIR
    assert (back.round, back.total_weight, back.count) == (3, 2.75, 3)
    assert back.payload.chunks is None
    np.testing.assert_array_equal(back.payload.values, values)


def test_cipher_aggregate_save_load_round_trip(tmp_path):
    # Prepare: chunks of different lengths, including bytes that look like the header separator
    chunks = [b"\n\n{json}\n", bytes(range(256)) * 3, b""]
    payload = Payload(chunks=chunks, digest=digest(chunks), fingerprint="0123456789abcdef")
    agg = Aggregate(round=12, payload=payload, total_weight=1.5, count=2)

    # Execute
    back = aggregates.load(aggregates.save(tmp_path, agg))

    # Assert
    assert back.payload.values is None
    assert back.payload.chunks == chunks
    assert back.payload.digest == digest(chunks)
    assert back.payload.fingerprint == "0123456789abcdef"
    assert (back.round, back.total_weight, back.count) == (12, 1.5, 2)


def test_load_all_returns_rounds_in_order(tmp_path):
    # Prepare: saved out of order
    for rnd in (2, 1, 3):
        aggregates.save(tmp_path, Aggregate(rnd, Payload(values=np.full(4, rnd, np.float32)), float(rnd), 2))

    # Execute
    aggs = aggregates.load_all(tmp_path)

    # Assert
    assert [a.round for a in aggs] == [1, 2, 3]
    np.testing.assert_array_equal(aggs[2].payload.values, np.full(4, 3, np.float32))


def test_load_all_detects_a_missing_round(tmp_path):
    # Prepare
    for rnd in (1, 2, 4):
        aggregates.save(tmp_path, Aggregate(rnd, Payload(values=np.zeros(2, np.float32)), 1.0, 2))

    # Execute / Assert
    with pytest.raises(ValueError, match="round 3 is missing"):
        aggregates.load_all(tmp_path)


def test_load_all_of_a_run_without_aggregates_is_empty(tmp_path):
    # Execute / Assert
    assert aggregates.load_all(tmp_path) == []


def test_load_all_orders_rounds_past_999_numerically(tmp_path):
    # Prepare: a 1001-round run (file names grow from round_999 to round_1000)
    payload = Payload(values=np.zeros(1, np.float32))
    for rnd in range(1, 1002):
        aggregates.save(tmp_path, Aggregate(rnd, payload, 1.0, 2))

    # Execute
    aggs = aggregates.load_all(tmp_path)

    # Assert
    assert [a.round for a in aggs] == list(range(1, 1002))


# ---------------------------------------------------------------- metrics


def _binary_mcc(y: np.ndarray, p: np.ndarray) -> float:
    tp = float(np.sum((y == 1) & (p == 1)))
    tn = float(np.sum((y == 0) & (p == 0)))
    fp = float(np.sum((y == 0) & (p == 1)))
    fn = float(np.sum((y == 1) & (p == 0)))
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def _rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC: the share of (positive, negative) pairs ranked correctly (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_binary_mcc_matches_the_textbook_formula():
    # Prepare
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.8, y, 1 - y)

    # Execute
    got = matthews_corrcoef(y, p, 2)

    # Assert
    np.testing.assert_allclose(got, _binary_mcc(y, p), rtol=1e-12)


def test_mcc_is_one_for_perfect_and_zero_when_undefined():
    # Prepare
    y = np.array([0, 1, 2, 2, 1, 0])

    # Execute / Assert
    assert matthews_corrcoef(y, y, 3) == pytest.approx(1.0)
    assert matthews_corrcoef(y, np.zeros_like(y), 3) == 0.0


def test_classification_metrics_match_numpy_references():
    # Prepare
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=g)
    logits = torch.randn(200, 2, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 2)

    # Execute
    m = classification_metrics(logits, labels)

    # Assert
    y = labels.numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    pred = probs.argmax(axis=1)
    log_probs = torch.log_softmax(logits.double(), dim=1).numpy()
    np.testing.assert_allclose(m["auc"], _rank_auc(y, probs[:, 1]), rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], (pred == y).mean(), rtol=1e-12)
    np.testing.assert_allclose(m["mcc"], _binary_mcc(y, pred), rtol=1e-9)
    np.testing.assert_allclose(m["loss"], -log_probs[np.arange(200), y].mean(), rtol=1e-5)


def test_classification_metrics_multiclass_auc_is_macro_one_vs_rest():
    # Prepare
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 3
    logits = torch.randn(90, 3, generator=g) + torch.nn.functional.one_hot(labels, 3)

    # Execute
    m = classification_metrics(logits, labels)

    # Assert
    y, probs = labels.numpy(), torch.softmax(logits, dim=1).numpy()
    reference = np.mean([_rank_auc((y == c).astype(int), probs[:, c]) for c in range(3)])
    np.testing.assert_allclose(m["auc"], reference, rtol=1e-6)


def test_classification_metrics_with_one_class_has_nan_auc():
    # Execute
    m = classification_metrics(torch.randn(5, 2), torch.zeros(5, dtype=torch.int64))

    # Assert
    assert math.isnan(m["auc"])
    assert 0.0 <= m["accuracy"] <= 1.0
