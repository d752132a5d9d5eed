"""What differs between runs: the config keys whose values differ, the groups of runs that differ
only by seed, and the warnings about differences that the table does not show (data, seed, code,
runs that stopped early)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.analysis.compare.runs import Run
from pipeline.analysis.compare.values import ABSENT, INACTIVE, canon, show_value
from pipeline.config.paths import is_path_key
from pipeline.config.tree import flatten

# Config keys that never count as a difference between runs, besides paths (pipeline.config.paths).
IGNORED_PREFIXES = ("hydra.", "deployment.", "log.")  # log.*: console verbosity never changes a result
IGNORED_KEYS = ("study_id",)  # new for every run: naming it would make every pair of runs differ


def _ignored(key: str) -> bool:
    return is_path_key(key) or key == "hydra" or key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


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
        values = {canon(c.get(key, ABSENT)) if key in c else ABSENT for c in flat} - {INACTIVE}
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
        label = tuple(canon(flat.get(k, ABSENT)) if k in flat else "<unset>" for k in others)
        groups.setdefault(label, []).append(i)
    result = list(groups.values())
    return result if any(len(g) > 1 for g in result) else None


def setting_label(run: Run, keys: Sequence[str]) -> str:
    """``key=value, ...`` of ``run``'s config for ``keys`` (inactive and missing keys left out)."""
    values = ((k, run.config.get(k, ABSENT)) for k in keys)
    return ", ".join(f"{k}={show_value(v)}" for k, v in values if v is not ABSENT and v is not INACTIVE)


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, Any] = {}
    for v in values:
        seen.setdefault(canon(v), v)
    return list(seen.values())


def run_warnings(runs: list[Run], keys: Sequence[str], groups: list[list[int]] | None) -> list[str]:
    """Warnings about ``runs`` (with differing ``keys`` and seed ``groups``): different data, seeds
    or code, runs that did not complete or have no test metrics."""
    out: list[str] = []
    if len(runs) > 1:
        data_keys = [k for k in keys if k.startswith("data.")]
        if data_keys:
            shown = "; ".join(
                f"{k} ({', '.join(show_value(v) for v in _distinct(r.config.get(k, ABSENT) for r in runs))})"
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
        if "seed" in keys:
            seeds = ", ".join(show_value(v) for v in _distinct(r.config.get("seed", ABSENT) for r in runs))
            if groups and all(len(g) > 1 for g in groups):
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
