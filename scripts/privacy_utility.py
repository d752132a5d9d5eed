"""The privacy-utility curve in one command: DP at epsilon 1, 3, 8 and no DP, then the plot.

    python scripts/privacy_utility.py data.root=../shared/data [--seeds 0 1 2] [--out privacy_utility] [more overrides]

Runs the ``privacy_sweep`` experiment (CKKS on; one run per privacy setting and seed) as a Hydra
multirun into OUT/runs, then the comparison report into OUT: ``privacy_utility.png`` (test ROC-AUC
against epsilon, mean and spread over the seeds, no-DP as the reference line), ``comparison.md``
(every run, then mean ± sample standard deviation per privacy setting), ``comparison_by_seed.csv``
and the other plots. Without ``--seeds`` every run takes the config's ``seed``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep_command(out: Path, seeds: list[int] | None, overrides: list[str]) -> list[str]:
    """The Hydra multirun of the sweep: privacy settings x ``seeds`` (the config's seed when None)."""
    if any(o.split("=", 1)[0].lstrip("+~") == "seed" for o in overrides):
        raise ValueError("give the seeds with --seeds, not as a seed= override")
    seed = [f"seed={','.join(str(s) for s in seeds)}"] if seeds else []
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        "-m",
        "experiment=privacy_sweep",
        f"hydra.sweep.dir={out / 'runs'}",
        *seed,
        *overrides,
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="privacy_utility", help="report folder (runs go to OUT/runs)")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per privacy setting and seed, e.g. --seeds 0 1 2")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.root=../shared/data")
    a = p.parse_args(argv)
    if a.seeds and len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds {' '.join(map(str, a.seeds))} repeats a seed; give each seed once")
    out = Path(a.out).resolve()
    try:
        sweep = sweep_command(out, a.seeds, a.overrides)
    except ValueError as e:
        p.error(str(e))
    if subprocess.run(sweep, cwd=ROOT).returncode != 0:
        print("error: the privacy sweep failed (see above)", file=sys.stderr)
        return 1
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(out / "runs"), "--out", str(out)])
    if done.returncode == 0:
        print(f"privacy-utility curve: {out / 'privacy_utility.png'} (table: {out / 'comparison.md'})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
