"""The run folder's plot: per-round curves of losses, AUC, epsilon and traffic (curves.png).

:func:`rounds_figure` draws the figure (tests read its axes), :func:`plot_rounds` saves it, and
:func:`run_title` says what the run was: model, hospitals, privacy and encryption setting.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.reporting.atomic import write_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from omegaconf import DictConfig

PLOT_FILE = "curves.png"
AUC_LIMITS = (0.5, 1.0)  # a fixed axis: chance level up to perfect, so runs' plots can be compared by eye

# The panels: (title, y-axis label, [(metrics.csv column, legend name), ...]); bytes get a unit in bytes_unit.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "loss",
        "cross-entropy loss",
        [("train_loss", "training loss (hospitals' mean)"), ("val_loss", "validation loss")],
    ),
    ("ROC-AUC", "ROC-AUC", [("val_auc", "validation AUC"), ("test_auc", "test AUC")]),
    ("privacy budget spent", "epsilon (max over hospitals)", [("epsilon_max", "epsilon spent")]),
    (
        "traffic per hospital",
        "{unit} per hospital per round",
        [("bytes_up", "uploaded (hospital to server)"), ("bytes_down", "downloaded (server to hospital)")],
    ),
]
BYTE_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def bytes_unit(largest: float) -> tuple[float, str]:
    """The divisor and unit (GiB, MiB, KiB or bytes) to show byte counts up to ``largest``."""
    return next(((f, u) for f, u in BYTE_UNITS if largest >= f), (1, "bytes"))


def integer_rounds(ax: Any) -> None:
    """Round ticks at whole numbers on ``ax``'s x-axis, even for a single round."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def auc_limits(ax: Any, values: list[float]) -> None:
    """Fix ``ax``'s y-axis to :data:`AUC_LIMITS` (lower when an AUC in ``values`` falls below chance)."""
    ax.set_ylim(min([AUC_LIMITS[0], *(v - 0.02 for v in values)]), AUC_LIMITS[1])


def run_title(cfg: DictConfig, hospitals: int) -> str:
    """The plot title of a run: model, hospitals, privacy (DP-SGD epsilon and delta, or no DP) and encryption."""
    model = str(cfg.model._target_).split(".")[-1]
    privacy = (
        f"DP-SGD epsilon {float(cfg.privacy.epsilon):g}, delta {float(cfg.privacy.delta):g}"
        if cfg.privacy.enabled
        else "no DP"
    )
    encryption = "CKKS-encrypted aggregation" if cfg.encryption.enabled else "plaintext aggregation"
    return f"{model}, {hospitals} hospitals, {privacy}, {encryption}"


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v not in ("", None) and math.isfinite(float(v)):
            xs.append(float(r["round"]))
            ys.append(float(v))
    return xs, ys


def rounds_figure(rows: list[dict], title: str = "", epsilon_target: float | None = None) -> Figure:
    """The per-round curves of ``rows`` (metrics.csv rows): loss, AUC (fixed 0.5-1 axis), epsilon
    spent with the ``epsilon_target`` as a dashed line, and bytes per hospital; integer round ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(18, 4.2))
    largest = max((v for key in ("bytes_up", "bytes_down") for v in _series(rows, key)[1]), default=0.0)
    scale, unit = bytes_unit(largest)
    for ax, (panel, ylabel, keys) in zip(axes, PANELS, strict=True):
        divisor = scale if panel.startswith("traffic") else 1
        for n, (key, name) in enumerate(keys):
            xs, ys = _series(rows, key)
            if key == "epsilon_max" and epsilon_target is None and not any(ys):
                continue  # no DP: nothing spent, no guarantee either (said on the panel below)
            if xs:  # the second series dashed: equal values (bytes up = down) stay visible
                ax.plot(xs, [y / divisor for y in ys], marker="os"[n], linestyle="-" if n == 0 else "--", label=name)
        if panel == "ROC-AUC":
            auc_limits(ax, [y for line in ax.lines for y in line.get_ydata()])
        if panel.startswith("traffic"):
            ax.set_ylim(0, max(largest / scale * 1.3, 1))  # from zero: equal traffic stays a flat line, not noise
        if panel.startswith("privacy"):
            if epsilon_target is not None:
                ax.axhline(epsilon_target, linestyle="--", color="tab:red", label=f"target epsilon {epsilon_target:g}")
                ax.set_ylim(0, max([epsilon_target, *_series(rows, "epsilon_max")[1]]) * 1.15)
            elif not ax.lines:
                ax.text(
                    0.5, 0.5, "no DP in this run:\nno privacy budget", ha="center", va="center", transform=ax.transAxes
                )
        if ax.lines:
            integer_rounds(ax)
        else:
            ax.set_xticks([])
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel.format(unit=unit))
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_rounds(rows: list[dict], path: Path, title: str = "", epsilon_target: float | None = None) -> Path | None:
    """Save :func:`rounds_figure` of ``rows`` into ``path``; None (no file) without rows."""
    if not rows:
        return None
    fig = rounds_figure(rows, title, epsilon_target)
    import matplotlib.pyplot as plt

    write_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
