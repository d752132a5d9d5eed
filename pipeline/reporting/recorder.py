"""A run folder's tables: metrics.csv (one row per round), summary.json and the round checkpoint.

Every file is written whole through :func:`pipeline.reporting.atomic.write_atomic`, so an
interrupted run never leaves a half-written file that looks complete. :func:`read_metrics` is the
one reader of metrics.csv (resume, comparison, tracking, benchmarks, progress echo).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.timing import PHASE_COLUMNS

COLUMNS = [
    "round",
    "hospitals",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_mcc",
    "val_threshold",
    "test_auc",
    "test_accuracy",
    "epsilon_max",
    "seconds",
    "bytes_up",
    "bytes_down",
    "aggregate_seconds",
    "encode_seconds",
    "decode_seconds",
    "clipped_fraction",
    "dropped",
    *PHASE_COLUMNS,  # the round's seconds split by phase (pipeline.reporting.timing); they add up to ``seconds``
]
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.json"
PRIVACY_FILE = "privacy.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"

Row = dict[str, Any]


def _number(text: str | None) -> int | float | str | None:
    """A metrics.csv cell: int or float; None for empty or non-finite; other text as it is."""
    if text in ("", None):
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and not any(c in text for c in ".eE") else value


def read_metrics(path: str | Path) -> list[Row]:
    """metrics.csv as rows of numbers (``None`` for empty cells); ``[]`` when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


def clean(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """``data`` as indented, key-sorted JSON (non-finite numbers as null), atomically."""
    return write_atomic(path, json.dumps(clean(data), indent=2, sort_keys=True, default=str) + "\n")


class RunRecorder:
    """Collects per-round rows and writes the run folder's tables and checkpoint."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []

    def load_rows(self, upto: int) -> None:
        """Take back the first ``upto`` rounds of an existing metrics.csv (resuming a run)."""
        rows = read_metrics(self.dir / METRICS_FILE)[:upto]
        if len(rows) < upto:
            raise ValueError(f"{self.dir / METRICS_FILE} has {len(rows)} rounds, the checkpoint says {upto}")
        self.rows = rows

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the checkpoint: the last complete round (written after its aggregate and metrics
        row) and the attempt under way (``in_progress``, written as each attempt starts)."""
        write_json(self.dir / CHECKPOINT_FILE, state)

    def read_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint; ValueError when the run completed no round."""
        path = self.dir / CHECKPOINT_FILE
        if not path.exists():
            raise ValueError(f"{self.dir} has no {CHECKPOINT_FILE}: no completed round to resume from")
        return json.loads(path.read_text())

    def add_round(self, row: Row) -> None:
        """Record one round and rewrite metrics.csv."""
        self.rows.append({c: row.get(c) for c in COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        write_atomic(self.dir / METRICS_FILE, buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write summary.json."""
        return write_json(self.dir / SUMMARY_FILE, summary)
