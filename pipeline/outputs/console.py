"""What a run prints: one line per finished round and the final table."""

from __future__ import annotations

from typing import Any


def progress_line(row: dict[str, Any], rounds: int) -> str:
    """One console line for a finished round (a metrics.csv row)."""
    parts = [f"round {row['round']}/{rounds}", f"{row['hospitals']} hospitals"]
    parts.append(f"train loss {_fmt(row.get('train_loss'))}")
    parts.append(f"val AUC {_fmt(row.get('val_auc'))}")
    if row.get("test_auc") not in (None, ""):
        parts.append(f"test AUC {row['test_auc']:.4f}")
    if row.get("epsilon_max"):
        parts.append(f"epsilon max {row['epsilon_max']:.3f}")
    parts.append(f"{row.get('seconds') or 0:.1f}s")
    return " | ".join(parts)


def _fmt(value: Any) -> str:
    return "nan" if value in (None, "") else f"{float(value):.4f}"


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
