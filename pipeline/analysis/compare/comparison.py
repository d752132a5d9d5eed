"""The comparison of a set of runs: :class:`Comparison` holds everything the report shows, and
:func:`compare` works it out from the runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.analysis.compare.differences import differing_keys, run_warnings, seed_groups, setting_label
from pipeline.analysis.compare.metrics import METRIC_COLUMNS, run_metrics
from pipeline.analysis.compare.runs import Run
from pipeline.analysis.compare.values import ABSENT, show_value

SEED_METRICS = ("val_auc", "test_auc", "test_accuracy", "test_mcc")


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
        """The table's columns: ``run``, the differing config keys, :data:`METRIC_COLUMNS`."""
        return ["run", *self.keys, *METRIC_COLUMNS]

    def table(self) -> list[dict[str, Any]]:
        """One dict per run: run name, differing config values (raw), metrics (raw numbers)."""
        return [
            {"run": run.name, **{k: run.config.get(k, ABSENT) for k in self.keys}, **m}
            for run, m in zip(self.runs, self.metrics, strict=True)
        ]

    def label(self, i: int) -> str:
        """Legend text of run ``i``: its differing config values, or its name when that is not unique."""
        labels = [setting_label(r, self.keys) for r in self.runs]
        return labels[i] if labels[i] and labels.count(labels[i]) == 1 else self.runs[i].name

    def group_keys(self) -> list[str]:
        """The differing keys that define a seed group (all but ``seed``)."""
        return [k for k in self.keys if k != "seed"]

    def seed_table(self) -> list[dict[str, Any]]:
        """Per seed group: its config values, run count, seeds, mean and sample std of each metric."""
        out = []
        for group in self.groups or []:
            first = self.runs[group[0]]
            row: dict[str, Any] = {k: first.config.get(k, ABSENT) for k in self.group_keys()}
            row["runs"] = len(group)
            row["seeds"] = ";".join(show_value(self.runs[i].config.get("seed", ABSENT)) for i in group)
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
    comparison.warnings.extend(run_warnings(comparison.runs, comparison.keys, comparison.groups))
    return comparison
