"""The command line, ``fedmed-compare`` / ``python scripts/compare.py``: :func:`parse_args` and
:func:`main`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.analysis.compare.comparison import compare
from pipeline.analysis.compare.report import runs_markdown, seed_markdown, write_report
from pipeline.analysis.compare.runs import CompareError, load_runs
from pipeline.heap import quick_exit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options (``argv`` ``None``: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="fedmed-compare",
        description="Compare finished runs: a table of the config keys that differ and the results, plus plots.",
    )
    parser.add_argument(
        "paths", nargs="+", help="run folders and/or folders holding runs (e.g. multirun/<date>/<time>)"
    )
    parser.add_argument("--out", default="comparison", help="report folder (default: ./comparison)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop (exit code 2) at a run folder without summary.json/config.yaml instead of skipping it "
        "with a warning (the default: a sweep's failed jobs are left out)",
    )
    parser.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="the default now (kept for older scripts): skip incomplete run folders with a warning",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 ok, 2 bad input, 1 report not written)."""
    args = parse_args(argv)
    quick_exit()  # no walk of the imported libraries' heap at exit (pipeline.heap)
    try:
        if args.strict and args.skip_incomplete:
            raise CompareError("--strict and --skip-incomplete contradict each other; give one")
        runs, notes = load_runs(args.paths, strict=args.strict)
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
