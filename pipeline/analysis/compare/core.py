"""Compare finished runs side by side: ``python scripts/compare.py RUN_OR_MULTIRUN_DIR [...] --out DIR``.

(or ``fedmed-compare``). Every folder under the given paths that holds ``config.yaml`` and
``summary.json`` is a run (a Hydra multirun folder holds one per job). The report folder gets:

* ``comparison.md`` / ``comparison.csv``: one row per run: ``run`` (short folder name), the config
  keys whose values differ between the runs (dotted names; paths and Hydra's keys are ignored, see
  :func:`pipeline.config.paths.is_path_key`; so are the settings of a switched-off privacy / encryption group), then the
  test AUC, accuracy and MCC, epsilon (max over hospitals), rounds completed, wall seconds, bytes up
  / down per round per hospital (mean over metrics.csv rows) and the encryption overhead (mean of
  aggregate + encode + decode seconds over the mean seconds of a round, in %). Missing values are
  ``-`` in the markdown and empty cells in the csv files.
* ``comparison_by_seed.csv`` (and a table in the markdown) when several runs differ only by
  ``seed``: mean and sample standard deviation of test AUC, accuracy and MCC per group.
* ``val_auc.png``, ``privacy_utility.png``, ``cost.png``.

Warnings (console and markdown) say when runs differ in their data (``data.*`` keys or the data
fingerprint in ``summary.json``'s ``provenance``), in seed, in code / library versions, or when a
run stopped early. A path without runs, or a run folder lacking ``summary.json`` or
``config.yaml``, stops the comparison with one line naming the folder and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.paths import is_path_key
from pipeline.config.tree import flatten
from pipeline.outputs.recorder import read_metrics

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
# Config keys that never count as a difference between runs, besides paths (pipeline.config.paths).
IGNORED_PREFIXES = ("hydra.", "deployment.")
# Groups switched off by ``<group>.enabled: false``: their other keys hold schema defaults that
# the run does not use (a run without DP still has privacy.epsilon: 8.0), shown as ``-``.
SWITCHED_GROUPS = ("privacy", "encryption")
METRIC_COLUMNS = [
    "test_auc",
    "test_accuracy",
    "test_mcc",
    "epsilon",
    "rounds",
    "seconds",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "encryption_overhead_pct",
    "attack_ssim_plaintext",
    "attack_ssim_dp",
    "mia_auc",
]
ATTACK_REPORT = Path("attack") / "report.json"  # written by scripts/attack.py
ATTACK_COLUMNS = ("attack_ssim_plaintext", "attack_ssim_dp", "mia_auc")
SEED_METRICS = ("test_auc", "test_accuracy", "test_mcc")
MISSING = "-"


class CompareError(Exception):
    """A problem with the runs to compare; its message is the one line shown to the user."""


class NoRunsFound(CompareError):
    """A given path holds no run folder."""


class IncompleteRun(CompareError):
    """A run folder lacks summary.json or config.yaml, or one of them cannot be read."""


@dataclass
class Run:
    """One run folder, read back."""

    path: Path
    config: dict[str, Any]  # flattened: dotted key -> value
    summary: dict[str, Any]
    rows: list[dict[str, float | None]] = field(default_factory=list)  # metrics.csv, numbers
    name: str = ""

    @property
    def provenance(self) -> dict[str, Any]:
        return self.summary.get("provenance") or {}


# ---------------------------------------------------------------------------------------------
# finding and reading runs


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2_x`` before ``10_x`` (Hydra numbers multirun jobs without padding)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IncompleteRun(f"{path}: cannot read it ({first})") from None


def _is_run_config(path: Path) -> bool:
    """A run's resolved config (data/federation as mappings), not a Hydra source config (defaults list)."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return True  # looks like a run's file; load_run reports it
    return isinstance(content, dict) and isinstance(content.get("data"), dict) and "defaults" not in content


def _looks_like_run(folder: Path, files: set[str]) -> bool:
    if SUMMARY_FILE in files or METRICS_FILE in files:
        return True
    return CONFIG_FILE in files and _is_run_config(folder / CONFIG_FILE)


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included), in natural order.

    A run folder holds config.yaml and summary.json. A folder holding only part of a run
    (metrics.csv, summary.json or a resolved config.yaml without the other file) raises
    :class:`IncompleteRun`; hidden folders (Hydra's ``.hydra``) and the insides of runs are skipped.
    Raises :class:`NoRunsFound` when there is no run at all.
    """
    if not root.exists():
        raise NoRunsFound(f"{root}: no such folder")
    if not root.is_dir():
        raise NoRunsFound(f"{root}: not a folder (give a run folder or a multirun folder)")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        files = set(filenames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if _looks_like_run(folder, files):
            for needed in (CONFIG_FILE, SUMMARY_FILE):
                if needed not in files:
                    hint = " (the run did not finish?)" if needed == SUMMARY_FILE else ""
                    raise IncompleteRun(f"{folder}: run folder without {needed}{hint}")
            found.append(folder)
            dirnames[:] = []  # a run's sub-folders (aggregates/) are not runs
    if not found:
        raise NoRunsFound(f"{root}: no runs found (a run folder holds {CONFIG_FILE} and {SUMMARY_FILE})")
    return sorted(found, key=_natural_key)


class _Inactive:
    """The value of a key of a switched-off group (see :data:`SWITCHED_GROUPS`)."""

    def __repr__(self) -> str:
        return "<inactive>"


INACTIVE = _Inactive()


def mask_inactive(flat: dict[str, Any]) -> dict[str, Any]:
    """Replace the keys of switched-off groups (``privacy.enabled: false`` ...) by :data:`INACTIVE`,
    so that unused defaults (a no-DP run's privacy.epsilon) are neither shown nor compared."""
    masked = dict(flat)
    for group in SWITCHED_GROUPS:
        if flat.get(f"{group}.enabled") is False:
            for key in flat:
                if key.startswith(f"{group}.") and key != f"{group}.enabled":
                    masked[key] = INACTIVE
    return masked


def load_run(folder: Path) -> Run:
    """Read ``folder``'s config.yaml, summary.json and metrics.csv; raise IncompleteRun if unreadable."""
    config_path, summary_path = folder / CONFIG_FILE, folder / SUMMARY_FILE
    for path in (config_path, summary_path):
        if not path.is_file():
            raise IncompleteRun(f"{folder}: run folder without {path.name}")
    config = _read_yaml(config_path)
    if not isinstance(config, dict):
        raise IncompleteRun(f"{config_path}: not a run config (expected a mapping)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise IncompleteRun(f"{summary_path}: cannot read it ({str(err).splitlines()[0]})") from None
    if not isinstance(summary, dict):
        raise IncompleteRun(f"{summary_path}: not a run summary (expected a JSON object)")
    flat = mask_inactive(flatten(config))
    flat["engine"] = engine(config)
    return Run(folder, flat, summary, read_metrics(folder / METRICS_FILE))


def engine(config: dict[str, Any]) -> str:
    """How a run was executed: Flower's simulation engine or a (local) Deployment Engine, TLS or not."""
    if (config.get("federation") or {}).get("mode", "federated") != "federated":
        return "none (baseline)"
    dep = config.get("deployment")
    if not dep:
        return "simulation"
    return "deployment (insecure)" if dep.get("insecure") else "deployment (TLS)"


_JOB_DIR = re.compile(r"^(\d+)_(.*)$")


def _hydra_job_names(names: Sequence[str]) -> list[str] | None:
    """Hydra multirun folders (``<num>_<override>,<override>...``) without the overrides all share:
    ``0_privacy=eps1`` rather than ``0_data=synthetic,federation.rounds=1,privacy=eps1``. ``None``
    unless every name looks like one and the result tells them apart."""
    split = []
    for name in names:
        match = _JOB_DIR.match(name)
        if not match or "=" not in name:
            return None
        split.append((match.group(1), match.group(2).split(",")))
    common = set.intersection(*(set(tokens) for _, tokens in split))
    short = [
        num + "".join(f"{'_' if i == 0 else ','}{t}" for i, t in enumerate(x for x in tokens if x not in common))
        for num, tokens in split
    ]
    return short if len(set(short)) == len(short) else None


def short_names(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing part of each path that tells the runs apart (folder name first).

    Hydra multirun job folders lose the overrides every job shares (see :func:`_hydra_job_names`)."""
    if len(paths) > 1 and (jobs := _hydra_job_names([p.name for p in paths])):
        return jobs
    parts = [p.resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(ps[-d:]) for ps, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        grown = False
        for i, n in enumerate(names):
            if n in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:
            return [str(p) for p in paths]


def load_runs(paths: Iterable[str | Path], skip_incomplete: bool = False) -> tuple[list[Run], list[str]]:
    """Find and read every run under ``paths``; return the runs and the warnings raised doing so.

    With ``skip_incomplete``, run folders lacking a file are skipped with a warning (a multirun
    whose jobs partly failed) instead of raising :class:`IncompleteRun`.
    """
    folders: list[Path] = []
    notes: list[str] = []
    for given in paths:
        root = Path(given).expanduser()
        if skip_incomplete:
            folders.extend(_find_runs_skipping(root, notes))
        else:
            folders.extend(find_runs(root))
    unique = list(dict.fromkeys(f.resolve() for f in folders))
    runs = []
    for folder in unique:
        try:
            runs.append(load_run(folder))
        except IncompleteRun as err:
            if not skip_incomplete:
                raise
            notes.append(f"skipped {err}")
    if not runs:
        raise NoRunsFound(f"{', '.join(str(p) for p in paths)}: no complete runs found")
    for run, name in zip(runs, short_names([r.path for r in runs]), strict=True):
        run.name = name
    return runs, notes


def _find_runs_skipping(root: Path, notes: list[str]) -> list[Path]:
    """find_runs, but a partial run folder becomes a note and the search goes on."""
    found: list[Path] = []
    if not root.is_dir():
        return find_runs(root)  # raises NoRunsFound with the reason
    for dirpath, dirnames, filenames in os.walk(root):
        folder, files = Path(dirpath), set(filenames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if _looks_like_run(folder, files):
            dirnames[:] = []
            missing = [f for f in (CONFIG_FILE, SUMMARY_FILE) if f not in files]
            if missing:
                notes.append(f"skipped {folder}: run folder without {missing[0]}")
            else:
                found.append(folder)
    if not found and not notes:
        raise NoRunsFound(f"{root}: no runs found (a run folder holds {CONFIG_FILE} and {SUMMARY_FILE})")
    return sorted(found, key=_natural_key)


# ---------------------------------------------------------------------------------------------
# what differs


def _ignored(key: str) -> bool:
    return is_path_key(key) or key == "hydra" or key.startswith(IGNORED_PREFIXES)


_ABSENT = object()  # a key a run's config does not have


def _canon(value: Any) -> Any:
    """A hashable form in which 8 and 8.0 are equal and lists / mappings compare by content."""
    if isinstance(value, bool) or value is None or value is INACTIVE or value is _ABSENT:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_canon(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canon(v)) for k, v in value.items()))
    return str(value)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose values are not the same in every config, in the order they first
    appear. A key missing in some configs counts as differing; an inactive key (:func:`mask_inactive`)
    does not (runs without DP do not make privacy.delta a difference; privacy.enabled shows them).
    Ignored keys (:func:`pipeline.config.paths.is_path_key`, hydra) are left out. Nested configs are flattened first."""
    flat = [flatten(c) for c in configs]
    order: dict[str, None] = {}
    for c in flat:
        order.update(dict.fromkeys(c))
    keys = []
    for key in order:
        if _ignored(key):
            continue
        values = {_canon(c.get(key, _ABSENT)) if key in c else _ABSENT for c in flat} - {INACTIVE}
        if len(values) > 1:
            keys.append(key)
    return keys


def seed_groups(configs: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[list[int]] | None:
    """Indices of ``configs`` grouped by every differing key in ``keys`` except ``seed``.

    ``None`` unless ``seed`` differs and at least one group holds several runs (runs that differ
    only by seed). Groups keep the order of their first run.
    """
    if "seed" not in keys:
        return None
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        flat = flatten(config)
        label = tuple(_canon(flat.get(k, _ABSENT)) if k in flat else "<unset>" for k in others)
        groups.setdefault(label, []).append(i)
    result = list(groups.values())
    return result if any(len(g) > 1 for g in result) else None


# ---------------------------------------------------------------------------------------------
# numbers per run


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def max_epsilon(summary: dict[str, Any]) -> float | None:
    """Largest epsilon spent by any hospital; ``None`` without DP."""
    eps = summary.get("epsilon") or {}
    values = [float(v) for v in eps.values() if v is not None] if isinstance(eps, dict) else []
    return max(values) if values else None


def run_metrics(run: Run) -> dict[str, float | int | None]:
    """The metric columns of one run (see :data:`METRIC_COLUMNS`)."""
    test = run.summary.get("test") or {}
    rows = run.rows
    overhead = None
    per_round = [
        sum(r[k] for k in ("aggregate_seconds", "encode_seconds", "decode_seconds") if r.get(k) is not None)
        for r in rows
        if any(r.get(k) is not None for k in ("aggregate_seconds", "encode_seconds", "decode_seconds"))
    ]
    seconds = _mean(r.get("seconds") for r in rows)
    if per_round and seconds:
        overhead = 100.0 * (sum(per_round) / len(per_round)) / seconds
    rounds = run.summary.get("rounds_completed")
    attack = attack_metrics(run.path)
    return {
        "test_auc": test.get("auc"),
        "test_accuracy": test.get("accuracy"),
        "test_mcc": test.get("mcc"),
        "epsilon": max_epsilon(run.summary),
        "rounds": int(rounds) if rounds is not None else (len(rows) or None),
        "seconds": run.summary.get("seconds"),
        "bytes_up_per_round": _mean(r.get("bytes_up") for r in rows),
        "bytes_down_per_round": _mean(r.get("bytes_down") for r in rows),
        "encryption_overhead_pct": overhead,
        **attack,
    }


def attack_metrics(folder: Path) -> dict[str, float | None]:
    """SSIM of the inversion attack (plaintext, DP) and membership-inference AUC, when attacked."""
    try:
        report = json.loads((folder / ATTACK_REPORT).read_text())
    except (OSError, ValueError):
        report = {}
    inversion, membership = report.get("inversion") or {}, report.get("membership") or {}
    return {
        "attack_ssim_plaintext": (inversion.get("plaintext") or {}).get("ssim"),
        "attack_ssim_dp": (inversion.get("dp") or {}).get("ssim"),
        "mia_auc": membership.get("auc"),
    }


def is_encrypted(run: Run) -> bool:
    if "encrypted" in run.summary:
        return bool(run.summary["encrypted"])
    return bool(run.config.get("encryption.enabled"))


def is_private(run: Run) -> bool:
    return bool(run.config.get("privacy.enabled")) or max_epsilon(run.summary) is not None


# ---------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Comparison:
    """Everything the report shows."""

    runs: list[Run]
    keys: list[str]
    metrics: list[dict[str, Any]]
    groups: list[list[int]] | None
    warnings: list[str]

    @property
    def columns(self) -> list[str]:
        return ["run", *self.keys, *METRIC_COLUMNS]

    def table(self) -> list[dict[str, Any]]:
        """One dict per run: run name, differing config values (raw), metrics (raw numbers)."""
        return [
            {"run": run.name, **{k: run.config.get(k, _ABSENT) for k in self.keys}, **m}
            for run, m in zip(self.runs, self.metrics, strict=True)
        ]

    def label(self, i: int) -> str:
        """Legend text of run ``i``: its differing config values, or its name when that is not unique."""
        labels = [_setting(r, self.keys) for r in self.runs]
        return labels[i] if labels[i] and labels.count(labels[i]) == 1 else self.runs[i].name

    def group_keys(self) -> list[str]:
        return [k for k in self.keys if k != "seed"]

    def seed_table(self) -> list[dict[str, Any]]:
        """Per seed group: its config values, run count, seeds, mean and sample std of each metric."""
        out = []
        for group in self.groups or []:
            first = self.runs[group[0]]
            row: dict[str, Any] = {k: first.config.get(k, _ABSENT) for k in self.group_keys()}
            row["runs"] = len(group)
            row["seeds"] = ";".join(_show_value(self.runs[i].config.get("seed", _ABSENT)) for i in group)
            for metric in SEED_METRICS:
                values = [self.metrics[i][metric] for i in group if self.metrics[i][metric] is not None]
                row[f"{metric}_mean"] = statistics.fmean(values) if values else None
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            out.append(row)
        return out


def compare(runs: list[Run], notes: Sequence[str] = ()) -> Comparison:
    """Work out the differing keys, metrics, seed groups and warnings of ``runs``."""
    configs = [r.config for r in runs]
    keys = differing_keys(configs)
    groups = seed_groups(configs, keys)
    comparison = Comparison(runs, keys, [run_metrics(r) for r in runs], groups, list(notes))
    comparison.warnings.extend(_warnings(comparison))
    return comparison


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, Any] = {}
    for v in values:
        seen.setdefault(_canon(v), v)
    return list(seen.values())


def _warnings(c: Comparison) -> list[str]:
    out: list[str] = []
    runs = c.runs
    if len(runs) > 1:
        data_keys = [k for k in c.keys if k.startswith("data.")]
        if data_keys:
            shown = "; ".join(
                f"{k} ({', '.join(_show_value(v) for v in _distinct(r.config.get(k, _ABSENT) for r in runs))})"
                for k in data_keys
            )
            out.append(f"runs differ in data: {shown}")
        prints = [((r.provenance.get("data") or {}).get("sha256")) for r in runs]
        if all(prints) and len(set(prints)) > 1:
            shown = ", ".join(f"{r.name}: {p}" for r, p in zip(runs, prints, strict=True))
            out.append(f"runs differ in data: the data fingerprints (provenance) differ ({shown})")
        elif not all(prints) and len(_distinct(r.config.get("data.root") for r in runs)) > 1:
            out.append(
                "runs read data from different data.root folders and not every run has a data fingerprint "
                "(provenance) to show that it is the same data"
            )
        if "seed" in c.keys:
            seeds = ", ".join(_show_value(v) for v in _distinct(r.config.get("seed", _ABSENT) for r in runs))
            if c.groups and all(len(g) > 1 for g in c.groups):
                out.append(f"runs differ in seed ({seeds}): see the mean ± std over seeds per group")
            else:
                out.append(
                    f"runs differ in seed ({seeds}): differences between runs mix seed noise with the "
                    "effect of the other config keys"
                )
        out.extend(_code_warnings(runs))
    for r in runs:
        status = r.summary.get("status")
        if status and status != "completed":
            reason = r.summary.get("stop_reason") or status
            out.append(f"run {r.name} did not complete: {reason}")
        test = r.summary.get("test") or {}
        if test.get("auc") is None:
            out.append(f"run {r.name} has no test metrics in summary.json")
    return out


def _code_warnings(runs: list[Run]) -> list[str]:
    """Warn when runs were made with different commits or library versions (where recorded)."""
    with_prov = [r for r in runs if r.provenance]
    if len(with_prov) < 2:
        return []
    diffs = []
    commits = _distinct((r.provenance.get("git") or {}).get("commit") for r in with_prov)
    if len(commits) > 1:
        diffs.append(f"git commit ({', '.join(str(c)[:10] if c else 'unknown' for c in commits)})")
    names: dict[str, None] = {}
    for r in with_prov:
        names.update(dict.fromkeys(r.provenance.get("versions") or {}))
    for name in names:
        found = _distinct((r.provenance.get("versions") or {}).get(name) for r in with_prov)
        if len(found) > 1:
            diffs.append(f"{name} ({', '.join(str(v) for v in found)})")
    return [f"runs come from different code or libraries: {'; '.join(diffs)}"] if diffs else []


# ---------------------------------------------------------------------------------------------
# formatting


def _show_value(value: Any) -> str:
    """A config value as a user would type it (true, null, [16, 32])."""
    if value is _ABSENT or value is INACTIVE:
        return MISSING
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _setting(run: Run, keys: Sequence[str]) -> str:
    """``key=value, ...`` of ``run``'s config for ``keys`` (inactive and missing keys left out)."""
    values = ((k, run.config.get(k, _ABSENT)) for k in keys)
    return ", ".join(f"{k}={_show_value(v)}" for k, v in values if v is not _ABSENT and v is not INACTIVE)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _format_metric(column: str, value: Any) -> str:
    if value is None or value is _ABSENT:
        return MISSING
    if column in ("test_auc", "test_accuracy", "test_mcc", *ATTACK_COLUMNS) or column.endswith(("_mean", "_std")):
        return f"{value:.4f}"
    if column == "epsilon":
        return f"{value:.3f}"
    if column == "seconds":
        return f"{value:.1f}"
    if column.startswith("bytes_"):
        return _human_bytes(value)
    if column.endswith("_pct"):
        return f"{value:.1f} %"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None or value is _ABSENT or value is INACTIVE:
        return ""
    if isinstance(value, (bool, list, dict)):
        return _show_value(value)
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
    rows = []
    for row in c.table():
        rows.append(
            [row["run"], *[_show_value(row[k]) for k in c.keys], *[_format_metric(m, row[m]) for m in METRIC_COLUMNS]]
        )
    return markdown_table(c.columns, rows)


def seed_markdown(c: Comparison) -> str:
    header = [*c.group_keys(), "runs", "seeds", *SEED_METRICS]
    rows = []
    for row in c.seed_table():
        cells = [_show_value(row[k]) for k in c.group_keys()] + [str(row["runs"]), row["seeds"].replace(";", ", ")]
        for metric in SEED_METRICS:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append(MISSING if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        rows.append(cells)
    return markdown_table(header, rows)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    path.write_text(buf.getvalue())


def report_markdown(c: Comparison, sources: Sequence[str]) -> str:
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
        "- `epsilon`: largest epsilon spent by any hospital (`-`: no DP).",
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


# ---------------------------------------------------------------------------------------------
# plots


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
        return _setting(run, other)

    series: dict[str, dict[Any, list[tuple[float, float]]]] = {}
    references: dict[str, list[float]] = {}
    for run, m in zip(c.runs, c.metrics, strict=True):
        if m["test_auc"] is None:
            continue
        if is_private(run) and m["epsilon"] is not None:
            target = _canon(run.config.get("privacy.epsilon"))
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
    seconds = [_mean(row.get("seconds") for row in r.rows) or 0.0 for r in c.runs]
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


# ---------------------------------------------------------------------------------------------
# report and command line


def write_report(c: Comparison, out: Path, sources: Sequence[str]) -> list[Path]:
    """Write the markdown, the csv file(s) and the three plots into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "comparison.md"
    md.write_text(report_markdown(c, sources))
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedmed-compare",
        description="Compare finished runs: a table of the config keys that differ and the results, plus plots.",
    )
    parser.add_argument(
        "paths", nargs="+", help="run folders and/or folders holding runs (e.g. multirun/<date>/<time>)"
    )
    parser.add_argument("--out", default="comparison", help="report folder (default: ./comparison)")
    parser.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="skip run folders without summary.json/config.yaml (failed sweep jobs) instead of stopping",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 ok, 2 bad input, 1 report not written)."""
    args = parse_args(argv)
    try:
        runs, notes = load_runs(args.paths, skip_incomplete=args.skip_incomplete)
        comparison = compare(runs, notes)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        write_report(comparison, out, args.paths)
    except OSError as err:
        print(f"error: cannot write the report to {out}: {err}", file=sys.stderr)
        return 1
    print(runs_markdown(comparison))
    if comparison.groups:
        print()
        print(seed_markdown(comparison))
    for warning in comparison.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"\nreport: {out / 'comparison.md'} (+ comparison.csv, val_auc.png, privacy_utility.png, cost.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
