"""A deployed round against a simulated one: the default experiment on both engines.

    python scripts/bench_deploy.py --data-root ../shared/data [--rounds 8] [--no-service]

Runs ``python -m pipeline.run`` once simulated and once with ``deployment=local`` (a SuperLink, a
SuperNode and a hospital service per hospital, TLS), same config, and reports the median and
spread of the seconds per round (metrics.csv), the wall time of each run and the ratio of their
median rounds. ``--no-service`` adds a deployed run with ``deployment.hospital_service=false``
(each message handled in its own fresh ClientApp process, as before the hospital service).
Prints Markdown for docs/BENCHMARKS.md. Nothing else heavy should run meanwhile.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.reporting.recorder import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def timed_run(overrides: list[str]) -> dict:
    """One run of the pipeline: wall seconds and its rounds' seconds (raises if it fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", f"federation.hospital_dir={tmp}/h"]
        cmd += overrides
        start = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
        rounds = [float(r["seconds"]) for r in read_metrics(run_dir / METRICS_FILE)]
    return {"wall": wall, "rounds": rounds}


def row(name: str, run: dict) -> str:
    r = run["rounds"]
    spread = f"{min(r):.1f}-{max(r):.1f}"
    return f"| {name} | {run['wall']:.0f} s | {statistics.median(r):.1f} s ({spread}) |"


def main(argv: list[str] | None = None) -> int:
    """Run the engines one after the other and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding pneumoniamnist.npz")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run (default: the experiment's 8)")
    parser.add_argument("--no-service", action="store_true", help="also deploy without the hospital services")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1")
    common = [f"data.root={args.data_root}", f"federation.rounds={args.rounds}"]
    runs = {"simulated": timed_run(common), "deployed": timed_run([*common, "deployment=local"])}
    if args.no_service:
        runs["deployed, no hospital service"] = timed_run(
            [*common, "deployment=local", "deployment.hospital_service=false"]
        )
    base = statistics.median(runs["simulated"]["rounds"])
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"`python scripts/bench_deploy.py --data-root {args.data_root} --rounds {args.rounds}`\n")
    print("| engine | wall | round, median (min-max) | round vs simulated |")
    print("|---|---|---|---|")
    for name, run in runs.items():
        print(f"{row(name, run)} {statistics.median(run['rounds']) / base:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
