"""A run's outputs in its folder: metrics.csv (one row per round), summary.json, the curves plot.

Files are written whole through a temporary name and a rename, so an interrupted run never
leaves a half-written file that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

COLUMNS = [
    "round",
    "hospitals",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_mcc",
    "test_auc",
    "test_accuracy",
    "epsilon_max",
    "seconds",
    "bytes_up",
    "bytes_down",
    "aggregate_seconds",
    "encode_seconds",
    "decode_seconds",
    "dropped",
]
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
CHECKPOINT_FILE = "checkpoint.json"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class RunRecorder:
    """Collects per-round rows and writes the run folder's tables and plot."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def load_rows(self, upto: int) -> None:
        """Take back the first ``upto`` rounds of an existing metrics.csv (resuming a run)."""
        with open(self.dir / METRICS_FILE) as f:
            rows = list(csv.DictReader(f))[:upto]
        if len(rows) < upto:
            raise ValueError(f"{self.dir / METRICS_FILE} has {len(rows)} rounds, the checkpoint says {upto}")
        self.rows = [{k: _number(v) for k, v in r.items()} for r in rows]

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Mark a round as complete: written last, after the round's aggregate and metrics row."""
        write_atomic(self.dir / CHECKPOINT_FILE, json.dumps(state, indent=2) + "\n")

    def read_checkpoint(self) -> dict[str, Any]:
        path = self.dir / CHECKPOINT_FILE
        if not path.exists():
            raise ValueError(f"{self.dir} has no {CHECKPOINT_FILE}: no completed round to resume from")
        return json.loads(path.read_text())

    def add_round(self, row: dict[str, Any]) -> None:
        """Record one round and rewrite metrics.csv."""
        self.rows.append({c: row.get(c, "") for c in COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        write_atomic(self.dir / METRICS_FILE, buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.dir / SUMMARY_FILE
        write_atomic(path, json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")
        return path

    def plot(self, title: str = "") -> Path | None:
        """Per-round curves: losses, validation/test AUC, epsilon, traffic."""
        if not self.rows:
            return None
        return plot_rounds(self.rows, self.dir / PLOT_FILE, title)


def _number(text: str) -> Any:
    if text == "":
        return ""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v not in ("", None) and math.isfinite(float(v)):
            xs.append(float(r["round"]))
            ys.append(float(v))
    return xs, ys


def plot_rounds(rows: list[dict], path: Path, title: str = "") -> Path:
    """Draw the per-round curves of ``rows`` (metrics.csv rows) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("loss", ["train_loss", "val_loss"]),
        ("ROC-AUC", ["val_auc", "test_auc"]),
        ("epsilon spent (max over hospitals)", ["epsilon_max"]),
        ("bytes per hospital", ["bytes_up", "bytes_down"]),
    ]
    for ax, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_xlabel("round")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_table(summary: dict[str, Any]) -> str:
    """A short text table of the final numbers, for the console."""
    test = summary.get("test") or {}
    lines = [
        f"{'run':<22}{summary.get('run_dir', '')}",
        f"{'mode':<22}{summary.get('mode', '')} ({summary.get('num_hospitals', '?')} hospitals, "
        f"{summary.get('rounds_completed', '?')} rounds)",
    ]
    for key in ("auc", "accuracy", "mcc", "loss"):
        if key in test and test[key] is not None:
            lines.append(f"{'test ' + key:<22}{test[key]:.4f}")
    eps = summary.get("epsilon") or {}
    if eps:
        lines.append(
            f"{'epsilon (max)':<22}{max(v for v in eps.values() if v is not None):.3f} "
            f"(target {summary.get('epsilon_target')})"
        )
    for key in ("bytes_per_param_up", "bytes_per_param_down", "seconds"):
        if summary.get(key) is not None:
            lines.append(f"{key:<22}{summary[key]:.3f}")
    width = max(len(s) for s in lines)
    return "\n".join(["-" * width, *lines, "-" * width])
