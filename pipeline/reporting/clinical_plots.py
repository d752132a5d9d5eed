"""The run folder's clinical plots of the final model on the test split: ``roc.png`` (ROC curve,
AUC with its bootstrap interval, the operating point) and ``calibration.png`` (reliability diagram
with bin counts and the expected calibration error).

Both are drawn from a :func:`pipeline.task.clinical.clinical_report` dict and the probabilities
it was computed from; only binary single-label data have them (:func:`write_clinical_plots`
writes nothing for other data).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_curve

from pipeline.reporting.atomic import write_figure
from pipeline.task.clinical import is_binary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROC_FILE = "roc.png"
CALIBRATION_FILE = "calibration.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def auc_text(report: dict[str, Any]) -> str:
    """``AUC 0.930 [95% CI 0.91-0.95]`` (without the interval when there is none)."""
    text = f"AUC {report['auc']:.3f}"
    if report.get("auc_ci"):
        low, high = report["auc_ci"]
        text += f" [95% CI {low:.2f}-{high:.2f}]"
    return text


def roc_figure(probs: np.ndarray, labels: np.ndarray, report: dict[str, Any], title: str = "") -> Figure:
    """The test ROC curve with the chance diagonal and the operating point at the report's threshold."""
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=auc_text(report))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance (AUC 0.5)")
    x, y = 1 - report["specificity"], report["sensitivity"]
    point = (
        f"threshold {report['threshold']:.3f}\nsensitivity {report['sensitivity']:.3f}\n"
        f"specificity {report['specificity']:.3f}"
    )
    ax.plot([x], [y], "o", color="tab:red", ms=8, label="operating point")
    ax.annotate(point, (x, y), xytext=(0.35, 0.2), textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title or "ROC curve on the test split", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_figure(report: dict[str, Any], title: str = "") -> Figure:
    """Reliability diagram (fraction of positives against mean probability per bin, the bin counts
    on the bars) with the perfect-calibration diagonal and the ECE in the title."""
    plt = _pyplot()
    bins = report["reliability"]
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    width = bins[0]["upper"] - bins[0]["lower"]
    for b in bins:
        if not b["count"]:
            continue
        centre = (b["lower"] + b["upper"]) / 2
        ax.bar(centre, b["fraction_positive"], width=width * 0.9, color="tab:blue", alpha=0.6, edgecolor="tab:blue")
        ax.text(centre, b["fraction_positive"] + 0.01, f"n={b['count']}", ha="center", va="bottom", fontsize=7)
    filled = [b for b in bins if b["count"]]
    ax.plot(
        [b["mean_probability"] for b in filled],
        [b["fraction_positive"] for b in filled],
        "o-",
        color="tab:red",
        label="fraction positive at the bin's mean probability",
    )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("predicted probability of the positive class")
    ax.set_ylabel("observed fraction of positives")
    heading = title or "Reliability diagram on the test split"
    ax.set_title(f"{heading}\nECE {report['ece']:.3f} ({len(bins)} equal-width bins)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_clinical_plots(
    run_dir: str | Path, probs: np.ndarray, labels: np.ndarray, report: dict[str, Any], suffix: str = ""
) -> list[Path]:
    """Save ``roc<suffix>.png`` and ``calibration<suffix>.png`` into ``run_dir`` (atomically); return their paths
    (none for data that are not binary single-label or whose test labels do not vary)."""
    if not is_binary(probs) or len(np.unique(labels)) < 2 or report.get("auc") is None:
        return []
    plt = _pyplot()
    run_dir = Path(run_dir)
    written = []
    for name, fig in (
        (ROC_FILE, roc_figure(probs, labels, report)),
        (CALIBRATION_FILE, calibration_figure(report)),
    ):
        stem, ext = name.rsplit(".", 1)
        written.append(write_figure(fig, run_dir / f"{stem}{suffix}.{ext}", dpi=120))
        plt.close(fig)
    return written
