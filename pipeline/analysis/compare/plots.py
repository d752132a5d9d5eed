"""The report's plots: validation AUC per round (``val_auc.png``), test AUC against epsilon
(``privacy_utility.png``) and seconds / bytes per round (``cost.png``). matplotlib is imported
only when a plot is drawn (Agg backend)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pipeline.analysis.compare.comparison import Comparison
from pipeline.analysis.compare.differences import setting_label
from pipeline.analysis.compare.metrics import is_encrypted, is_private, mean_present
from pipeline.analysis.compare.runs import Run
from pipeline.analysis.compare.values import canon


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_auc(c: Comparison, path: Path) -> Path:
    """Validation AUC per round, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(c.runs):
        points = [
            (r["round"], r["val_auc"]) for r in run.rows if r.get("round") is not None and r.get("val_auc") is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=c.label(i))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("validation ROC-AUC")
    ax.set_title("Validation AUC per round")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no per-round metrics (metrics.csv)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_privacy_utility(c: Comparison, path: Path) -> Path:
    """Test AUC against epsilon spent for DP runs (one line per setting of the other differing keys,
    mean ± std over seeds); runs without DP as horizontal reference lines; log x-axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    other = [k for k in c.keys if not k.startswith("privacy.") and k != "seed"]

    def setting(run: Run) -> str:
        return setting_label(run, other)

    series: dict[str, dict[Any, list[tuple[float, float]]]] = {}
    references: dict[str, list[float]] = {}
    for run, m in zip(c.runs, c.metrics, strict=True):
        if m["test_auc"] is None:
            continue
        if is_private(run) and m["epsilon"] is not None:
            target = canon(run.config.get("privacy.epsilon"))
            series.setdefault(setting(run), {}).setdefault(target, []).append((m["epsilon"], m["test_auc"]))
        elif not is_private(run):
            references.setdefault(setting(run), []).append(m["test_auc"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, by_target) in enumerate(series.items()):
        pts = sorted(
            (
                statistics.fmean(e for e, _ in v),
                statistics.fmean(a for _, a in v),
                statistics.stdev([a for _, a in v]) if len(v) > 1 else 0.0,
            )
            for v in by_target.values()
        )
        xs, ys, errs = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colors[n % len(colors)], label=label or "DP-SGD")
    for n, (label, aucs) in enumerate(references.items()):
        ax.axhline(
            statistics.fmean(aucs),
            linestyle="--",
            color=colors[(len(series) + n) % len(colors)],
            label=f"no DP{': ' + label if label else ''}",
        )
    ax.set_xscale("log")
    if series:
        from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

        ticks = sorted({round(x, 2) for line in ax.lines for x in line.get_xdata() if x > 0})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_xlim(0.5, 20)
        ax.text(0.5, 0.5, "no DP runs with test AUC", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epsilon spent (max over hospitals, log scale)")
    ax.set_ylabel("test ROC-AUC")
    ax.set_title("Privacy-utility trade-off")
    ax.grid(alpha=0.3, which="both")
    if series or references:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost(c: Comparison, path: Path) -> Path:
    """Seconds per round (encryption share hatched) and bytes per round per hospital, one bar per
    run, coloured plaintext vs encrypted."""
    plt = _pyplot()
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(max(9, 1.2 * len(c.runs) + 4), 4.5))
    names = [r.name for r in c.runs]
    xs = list(range(len(names)))
    colour = {False: "tab:blue", True: "tab:orange"}
    enc = [is_encrypted(r) for r in c.runs]
    seconds = [mean_present(row.get("seconds") for row in r.rows) or 0.0 for r in c.runs]
    crypto = [s * (m["encryption_overhead_pct"] or 0.0) / 100 for s, m in zip(seconds, c.metrics, strict=True)]
    ax_t.bar(xs, seconds, color=[colour[e] for e in enc])
    ax_t.bar(xs, crypto, color="none", edgecolor="black", hatch="//", linewidth=0.5)
    up = [m["bytes_up_per_round"] or 0.0 for m in c.metrics]
    down = [m["bytes_down_per_round"] or 0.0 for m in c.metrics]
    scale, byte_unit = next(
        ((f, u) for f, u in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")) if max(up + down, default=0) >= f),
        (1, "bytes"),
    )
    up, down = [v / scale for v in up], [v / scale for v in down]
    width = 0.4
    ax_b.bar([x - width / 2 for x in xs], up, width, color=[colour[e] for e in enc])
    ax_b.bar([x + width / 2 for x in xs], down, width, color=[colour[e] for e in enc], alpha=0.5)
    for ax, title, unit in ((ax_t, "seconds per round", "s"), (ax_b, "bytes per round per hospital", byte_unit)):
        ax.set_ylim(0, (ax.get_ylim()[1] or 1.0) * 1.3)  # room for the legend above the bars
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
    from matplotlib.patches import Patch

    ax_t.legend(
        handles=[
            Patch(color=colour[False], label="plaintext"),
            Patch(color=colour[True], label="encrypted"),
            Patch(facecolor="none", edgecolor="black", hatch="//", label="aggregate+encode+decode"),
        ],
        fontsize=7,
    )
    ax_b.legend(
        handles=[Patch(color="grey", label="up"), Patch(color="grey", alpha=0.5, label="down")],
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
