"""The report's plots: validation AUC per round (``val_auc.png``), test AUC against epsilon
(``privacy_utility.png``) and seconds / bytes per round (``cost.png``). matplotlib is imported
only when a plot is drawn (Agg backend). Each ``plot_*`` saves the figure its ``*_figure`` draws
(tests read the figures' axes)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pipeline.analysis.compare.comparison import Comparison
from pipeline.analysis.compare.differences import setting_label
from pipeline.analysis.compare.metrics import is_encrypted, is_private, mean_present
from pipeline.analysis.compare.runs import Run
from pipeline.analysis.compare.values import canon
from pipeline.reporting.atomic import write_figure
from pipeline.reporting.plots import auc_limits, bytes_unit, integer_rounds


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    write_figure(fig, path, dpi=110, bbox_inches="tight")  # legends below the axes stay in the picture
    plt.close(fig)
    return path


LEGEND_WIDTH = 90  # characters per legend line before a label wraps
BAR_LABEL_WIDTH = 26  # characters a bar's label line may take before bars get letters and a key below


def _legend_below(ax: Any) -> None:
    """The legend under the axes, long labels wrapped, so that it never hides the curves."""
    import textwrap

    handles, labels = ax.get_legend_handles_labels()
    wrapped = [textwrap.fill(label, LEGEND_WIDTH) for label in labels]
    ax.legend(handles, wrapped, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def val_auc_figure(c: Comparison) -> Any:
    """Validation AUC per round, one line per run (labelled by its differing config values);
    integer round ticks, AUC from 0.5 to 1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(c.runs):
        points = [
            (r["round"], r["val_auc"]) for r in run.rows if r.get("round") is not None and r.get("val_auc") is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=c.label(i))
    integer_rounds(ax)
    auc_limits(ax, [y for line in ax.lines for y in line.get_ydata()])
    ax.set_xlabel("round")
    ax.set_ylabel("validation ROC-AUC")
    ax.set_title("Validation AUC per round")
    ax.grid(alpha=0.3)
    if ax.lines:
        _legend_below(ax)
    else:
        ax.text(0.5, 0.5, "no per-round metrics (metrics.csv)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot_val_auc(c: Comparison, path: Path) -> Path:
    """Save :func:`val_auc_figure` into ``path``."""
    return _save(val_auc_figure(c), path)


def privacy_utility_figure(c: Comparison) -> Any:
    """Test AUC against epsilon spent for DP runs (one line per setting of the other differing keys,
    mean ± std over seeds); runs without DP as horizontal reference lines; log x-axis, AUC from 0.5 to 1."""
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
    spent: list[float] = []  # the epsilons drawn: the x ticks (not the reference lines' axes-relative x)
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
        spent.extend(xs)
        ax.errorbar(
            xs,
            ys,
            yerr=errs,
            marker="o",
            capsize=3,
            color=colors[n % len(colors)],
            label=f"DP-SGD{': ' + label if label else ''}",
        )
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

        ticks = sorted({round(x, 1) for x in spent if x > 0})  # epsilon to 0.1: close values share a tick
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)  # every tick inside, also when all epsilons are close
    else:
        ax.set_xlim(0.5, 20)
        ax.text(0.5, 0.5, "no DP runs with test AUC", ha="center", va="center", transform=ax.transAxes)
    auc_limits(ax, [m["test_auc"] for m in c.metrics if m["test_auc"] is not None])
    ax.set_xlabel("epsilon spent (max over hospitals, log scale)")
    ax.set_ylabel("test ROC-AUC")
    ax.set_title("Privacy-utility trade-off")
    ax.grid(alpha=0.3, which="both")
    if series or references:
        _legend_below(ax)
    fig.tight_layout()
    return fig


def plot_privacy_utility(c: Comparison, path: Path) -> Path:
    """Save :func:`privacy_utility_figure` into ``path``."""
    return _save(privacy_utility_figure(c), path)


def bar_labels(c: Comparison) -> list[str]:
    """The cost bars' labels: each run's differing config values, one per line (its name where
    they do not tell it apart, as in :meth:`Comparison.label`)."""
    labels = [c.label(i) for i in range(len(c.runs))]
    return [
        "\n".join(part for k in c.keys if (part := setting_label(run, [k]))) if label != run.name else label
        for run, label in zip(c.runs, labels, strict=True)
    ]


def cost_figure(c: Comparison) -> Any:
    """Seconds per round (the aggregate + encode + decode share as a hatched lower segment, its
    percentage above the bar) and bytes per round per hospital, one bar per run labelled by
    :func:`bar_labels`, coloured plaintext vs encrypted (legend entries only for what is shown)."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(max(9, 1.4 * len(c.runs) + 5), 5))
    labels = bar_labels(c)
    if any(len(line) > BAR_LABEL_WIDTH for label in labels for line in label.splitlines()) or any(
        label.count("\n") > 2 for label in labels
    ):  # too long to sit under a bar: letters there, the settings written out below the figure
        import textwrap

        key = [textwrap.fill(f"{chr(65 + i)}: {label.replace(chr(10), ', ')}", 150) for i, label in enumerate(labels)]
        fig.text(0.01, -0.02, "\n".join(key), fontsize=7, va="top", ha="left")
        labels = [chr(65 + i) for i in range(len(labels))]
    xs = list(range(len(labels)))
    colour = {False: "tab:blue", True: "tab:orange"}
    enc = [is_encrypted(r) for r in c.runs]
    colours = [colour[e] for e in enc]
    seconds = [mean_present(row.get("seconds") for row in r.rows) or 0.0 for r in c.runs]
    pct = [m["encryption_overhead_pct"] or 0.0 for m in c.metrics]
    crypto = [s * p / 100 for s, p in zip(seconds, pct, strict=True)]
    ax_t.bar(xs, crypto, color=colours, edgecolor="black", hatch="///", linewidth=0.6)
    ax_t.bar(xs, [s - k for s, k in zip(seconds, crypto, strict=True)], bottom=crypto, color=colours)
    for x, s, p in zip(xs, seconds, pct, strict=True):
        if p:
            ax_t.annotate(f"{p:.1f}%", (x, s), ha="center", va="bottom", fontsize=7)
    up = [m["bytes_up_per_round"] or 0.0 for m in c.metrics]
    down = [m["bytes_down_per_round"] or 0.0 for m in c.metrics]
    scale, byte_unit = bytes_unit(max(up + down, default=0))
    up, down = [v / scale for v in up], [v / scale for v in down]
    width = 0.4
    ax_b.bar([x - width / 2 for x in xs], up, width, color=colours)
    ax_b.bar([x + width / 2 for x in xs], down, width, color=colours, alpha=0.5)
    for ax, title, unit in (
        (ax_t, "seconds per round", "seconds per round (mean over rounds)"),
        (ax_b, "traffic per round per hospital", f"{byte_unit} per hospital per round"),
    ):
        ax.set_ylim(0, (ax.get_ylim()[1] or 1.0) * 1.3)  # room for the legend above the bars
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
    kinds = [Patch(color=colour[e], label="encrypted (CKKS)" if e else "plaintext") for e in sorted(set(enc))]
    if any(crypto):
        kinds.append(
            Patch(facecolor="white", edgecolor="black", hatch="///", label="aggregate + encode + decode (% of round)")
        )
    ax_t.legend(handles=kinds, fontsize=7, loc="upper left")
    ax_b.legend(
        handles=[
            *kinds[: len(set(enc))],
            Patch(facecolor="grey", label="uploaded (left bar)"),
            Patch(facecolor="grey", alpha=0.5, label="downloaded (right bar)"),
        ],
        fontsize=7,
        loc="upper left",
    )
    fig.tight_layout()
    return fig


def plot_cost(c: Comparison, path: Path) -> Path:
    """Save :func:`cost_figure` into ``path``."""
    return _save(cost_figure(c), path)
