"""The run folder's plot: per-round curves of losses, AUC, epsilon and traffic (curves.png)."""

from __future__ import annotations

import math
from pathlib import Path

PLOT_FILE = "curves.png"


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v not in ("", None) and math.isfinite(float(v)):
            xs.append(float(r["round"]))
            ys.append(float(v))
    return xs, ys


def plot_rounds(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Draw the per-round curves of ``rows`` (metrics.csv rows) into ``path``; None (no file) without rows."""
    if not rows:
        return None
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
