"""The report files: the markdown tables and ``comparison.md``, the csv files, and
:func:`write_report`, which writes them and the plots into the report folder."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.analysis.compare.comparison import SEED_METRICS, Comparison
from pipeline.analysis.compare.metrics import ATTACK_COLUMNS, METRIC_COLUMNS
from pipeline.analysis.compare.plots import plot_cost, plot_privacy_utility, plot_val_auc
from pipeline.analysis.compare.values import ABSENT, INACTIVE, MISSING, show_value
from pipeline.reporting.atomic import write_atomic


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _format_metric(column: str, value: Any) -> str:
    if value is None or value is ABSENT:
        return MISSING
    if column in ("val_auc", "test_auc", "test_accuracy", "test_mcc", *ATTACK_COLUMNS) or column.endswith(
        ("_mean", "_std")
    ):
        return f"{value:.4f}"
    if column in ("epsilon", "lifetime_epsilon", "noise_multiplier"):
        return f"{value:.3f}"
    if column == "seconds":
        return f"{value:.1f}"
    if column.startswith("bytes_"):
        return _human_bytes(value)
    if column.endswith("_pct"):
        return f"{value:.1f} %"
    return str(value)


def _test_auc_cell(row: dict[str, Any]) -> str:
    """The test AUC with its 95% interval when the run has one: ``0.930 [0.91, 0.95]``."""
    ci = row.get("test_auc_ci")
    if row.get("test_auc") is None or not ci:
        return _format_metric("test_auc", row.get("test_auc"))
    return f"{row['test_auc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _csv_value(value: Any) -> Any:
    if value is None or value is ABSENT or value is INACTIVE:
        return ""
    if isinstance(value, (bool, list, dict)):
        return show_value(value)
    return value


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, columns padded for reading in a terminal."""
    cells = [[_md_cell(h) for h in header], *[[_md_cell(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def runs_markdown(c: Comparison) -> str:
    """The table of runs (one row per run) as markdown."""
    rows = []
    for row in c.table():
        metrics = [_test_auc_cell(row) if m == "test_auc" else _format_metric(m, row[m]) for m in METRIC_COLUMNS]
        rows.append([row["run"], *[show_value(row[k]) for k in c.keys], *metrics])
    return markdown_table(c.columns, rows)


def seed_markdown(c: Comparison) -> str:
    """The table of seed groups (mean ± std over seeds) as markdown."""
    header = [*c.group_keys(), "runs", "seeds", *SEED_METRICS]
    rows = []
    for row in c.seed_table():
        cells = [show_value(row[k]) for k in c.group_keys()] + [str(row["runs"]), row["seeds"].replace(";", ", ")]
        for metric in SEED_METRICS:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append(MISSING if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        rows.append(cells)
    return markdown_table(header, rows)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as a csv file of ``columns`` (missing values as empty cells)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_atomic(path, buf.getvalue())


def report_markdown(c: Comparison, sources: Sequence[str]) -> str:
    """``comparison.md``: warnings, the table of runs, the seed groups, the plots and the run folders."""
    parts = [
        "# Run comparison",
        "",
        f"{len(c.runs)} run(s) from {', '.join(f'`{s}`' for s in sources)}.",
    ]
    if c.warnings:
        parts += ["", "## Warnings", "", *[f"- {w}" for w in c.warnings]]
    parts += [
        "",
        "## Runs",
        "",
        "Config columns: the keys whose values differ between the runs"
        + (f" ({', '.join(c.keys)})." if c.keys else " (none: the runs share one config)."),
        "",
        runs_markdown(c),
        "",
        "- `test_auc`: with its 95% stratified bootstrap interval in brackets when the run has one.",
        "- `epsilon`: largest epsilon spent by any hospital (`-`: no DP).",
        "- `noise_multiplier`, `randomness`, `lifetime_epsilon`: from privacy.json: the largest noise multiplier, "
        "where the DP batches and noise came from (secure / unpredictable / reproducible: not private), and the "
        "largest lifetime epsilon of a hospital over all its studies.",
        "- `seconds`: wall time of the whole run; `rounds`: rounds completed.",
        "- `bytes_*_per_round`: per hospital and round, mean over the rounds of metrics.csv.",
        "- `encryption_overhead_pct`: mean (aggregate + encode + decode) seconds over the mean seconds of a round.",
    ]
    if c.groups:
        parts += [
            "",
            "## Over seeds",
            "",
            "Mean ± sample standard deviation per group of runs that differ only by seed.",
            "",
        ]
        parts.append(seed_markdown(c))
    parts += [
        "",
        "## Plots",
        "",
        "![validation AUC per round](val_auc.png)",
        "",
        "![privacy-utility trade-off](privacy_utility.png)",
        "",
        "![cost per round](cost.png)",
        "",
        "## Run folders",
        "",
        *[f"- `{r.name}`: `{r.path}`" for r in c.runs],
        "",
    ]
    return "\n".join(parts)


def write_report(c: Comparison, out: Path, sources: Sequence[str]) -> list[Path]:
    """Write the markdown, the csv file(s) and the three plots into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "comparison.md"
    write_atomic(md, report_markdown(c, sources))
    written.append(md)
    write_csv(out / "comparison.csv", c.columns, c.table())
    written.append(out / "comparison.csv")
    by_seed = out / "comparison_by_seed.csv"
    if c.groups:
        columns = [*c.group_keys(), "runs", "seeds", *[f"{m}_{s}" for m in SEED_METRICS for s in ("mean", "std")]]
        write_csv(by_seed, columns, c.seed_table())
        written.append(by_seed)
    elif by_seed.exists():
        by_seed.unlink()  # left from an earlier comparison into the same folder
    written.append(plot_val_auc(c, out / "val_auc.png"))
    written.append(plot_privacy_utility(c, out / "privacy_utility.png"))
    written.append(plot_cost(c, out / "cost.png"))
    return written
