"""Finding and reading run folders: :class:`Run`, :func:`find_runs`, :func:`load_runs`, the short
names runs are shown by, and the errors that stop a comparison.

A run folder holds ``config.yaml`` and ``summary.json`` (and usually ``metrics.csv``); a Hydra
multirun folder holds one per job.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.analysis.compare.values import mask_inactive
from pipeline.config.tree import flatten
from pipeline.reporting.recorder import read_metrics

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"


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
        """``summary.json``'s provenance record (empty when the run has none)."""
        return self.summary.get("provenance") or {}


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


def find_runs(root: Path, incomplete: list[str] | None = None) -> list[Path]:
    """Run folders under ``root`` (itself included), in natural order.

    A run folder holds config.yaml and summary.json. A folder holding only part of a run
    (metrics.csv, summary.json or a resolved config.yaml without the other file: a failed or
    unfinished run) raises :class:`IncompleteRun`, or, given an ``incomplete`` list, is added to it
    as ``"<folder> (no <file>)"`` and left out. Hidden folders (Hydra's ``.hydra``) and the insides
    of runs are skipped. Raises :class:`NoRunsFound` when there is no run at all, complete or not.
    """
    if not root.exists():
        raise NoRunsFound(f"{root}: no such folder")
    if not root.is_dir():
        raise NoRunsFound(f"{root}: not a folder (give a run folder or a multirun folder)")
    found: list[Path] = []
    partial = 0
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        files = set(filenames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if _looks_like_run(folder, files):
            dirnames[:] = []  # a run's sub-folders (aggregates/) are not runs
            missing = next((f for f in (SUMMARY_FILE, CONFIG_FILE) if f not in files), None)
            if missing is None:
                found.append(folder)
            elif incomplete is None:
                hint = " (the run did not finish?)" if missing == SUMMARY_FILE else ""
                raise IncompleteRun(f"{folder}: run folder without {missing}{hint}")
            else:
                incomplete.append(f"{folder} (no {missing})")
                partial += 1
    if not found and not partial:
        raise NoRunsFound(f"{root}: no runs found (a run folder holds {CONFIG_FILE} and {SUMMARY_FILE})")
    return sorted(found, key=_natural_key)


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


def load_runs(paths: Iterable[str | Path], strict: bool = False) -> tuple[list[Run], list[str]]:
    """Find and read every run under ``paths``; return the runs and the warnings raised doing so.

    Run folders lacking summary.json or config.yaml (failed or unfinished runs of a sweep) are left
    out with one warning naming them; with ``strict`` the first one raises :class:`IncompleteRun`.
    A file that is there but cannot be read always raises.
    """
    paths = list(paths)
    incomplete: list[str] | None = None if strict else []
    folders: list[Path] = []
    for given in paths:
        folders.extend(find_runs(Path(given).expanduser(), incomplete))
    unique = list(dict.fromkeys(f.resolve() for f in folders))
    notes = []
    if incomplete:
        notes.append(
            f"skipped {len(incomplete)} incomplete run folder{'s' if len(incomplete) > 1 else ''} "
            f"(failed or unfinished runs; --strict stops instead): {', '.join(incomplete)}"
        )
    if not unique:
        raise NoRunsFound(f"{', '.join(str(p) for p in paths)}: no complete runs found; {notes[0]}")
    runs = [load_run(folder) for folder in unique]
    for run, name in zip(runs, short_names([r.path for r in runs]), strict=True):
        run.name = name
    return runs, notes
