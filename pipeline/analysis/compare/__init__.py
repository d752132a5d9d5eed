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
run stopped early. Run folders lacking ``summary.json`` or ``config.yaml`` (a sweep's failed jobs)
are left out with one warning line naming them (``--strict``: they stop the comparison instead). A
path without runs, an unreadable file, or (``--strict``) an incomplete run folder stops the comparison
with one line naming the folder and exit code 2.

The package owns reading run folders back and reporting on them; it only reads the files a run
left (config.yaml, summary.json, metrics.csv, attack/report.json) and must not import the engines
(:mod:`pipeline.engines`) or the Flower apps (:mod:`pipeline.flower`). Its modules, each importing
only those above it:

* :mod:`.values`: inactive / absent markers, comparing and showing config values.
* :mod:`.runs`: finding and loading run folders (:class:`Run`), short names, the errors.
* :mod:`.differences`: differing keys, seed groups, warnings.
* :mod:`.metrics`: the numbers of one run, attack-report columns.
* :mod:`.comparison`: :class:`Comparison` and :func:`compare`.
* :mod:`.plots`: val_auc / privacy_utility / cost PNGs.
* :mod:`.report`: markdown and csv files, :func:`write_report`.
* :mod:`.cli`: :func:`parse_args` and :func:`main`.
"""

from pipeline.analysis.compare.cli import main, parse_args
from pipeline.analysis.compare.comparison import SEED_METRICS, Comparison, compare
from pipeline.analysis.compare.differences import IGNORED_PREFIXES, differing_keys, run_warnings, seed_groups
from pipeline.analysis.compare.metrics import (
    ATTACK_COLUMNS,
    ATTACK_REPORT,
    METRIC_COLUMNS,
    attack_metrics,
    is_encrypted,
    is_private,
    max_epsilon,
    run_metrics,
)
from pipeline.analysis.compare.plots import plot_cost, plot_privacy_utility, plot_val_auc
from pipeline.analysis.compare.report import (
    markdown_table,
    report_markdown,
    runs_markdown,
    seed_markdown,
    write_csv,
    write_report,
)
from pipeline.analysis.compare.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    CompareError,
    IncompleteRun,
    NoRunsFound,
    Run,
    engine,
    find_runs,
    load_run,
    load_runs,
    short_names,
)
from pipeline.analysis.compare.values import INACTIVE, MISSING, SWITCHED_GROUPS, mask_inactive

__all__ = [
    "ATTACK_COLUMNS",
    "ATTACK_REPORT",
    "CONFIG_FILE",
    "IGNORED_PREFIXES",
    "INACTIVE",
    "METRICS_FILE",
    "METRIC_COLUMNS",
    "MISSING",
    "SEED_METRICS",
    "SUMMARY_FILE",
    "SWITCHED_GROUPS",
    "CompareError",
    "Comparison",
    "IncompleteRun",
    "NoRunsFound",
    "Run",
    "attack_metrics",
    "compare",
    "differing_keys",
    "engine",
    "find_runs",
    "is_encrypted",
    "is_private",
    "load_run",
    "load_runs",
    "main",
    "markdown_table",
    "max_epsilon",
    "mask_inactive",
    "parse_args",
    "plot_cost",
    "plot_privacy_utility",
    "plot_val_auc",
    "report_markdown",
    "run_metrics",
    "run_warnings",
    "runs_markdown",
    "seed_groups",
    "seed_markdown",
    "short_names",
    "write_csv",
    "write_report",
]
