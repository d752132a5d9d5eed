"""The privacy-utility curve in one command: DP at epsilon 1, 3, 8 and no DP, then the plot.

    python scripts/privacy_utility.py data.root=../shared/data [--out privacy_utility] [more overrides]

Runs the ``privacy_sweep`` experiment (4 runs, CKKS on) as a Hydra multirun into OUT/runs, then
the comparison report into OUT: ``privacy_utility.png`` (test ROC-AUC against epsilon, no-DP as
the reference line), ``comparison.md`` and the other plots.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="privacy_utility", help="report folder (runs go to OUT/runs)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.root=../shared/data")
    a = p.parse_args()
    out = Path(a.out).resolve()
    sweep = [sys.executable, "-m", "pipeline.run", "-m", "experiment=privacy_sweep", f"hydra.sweep.dir={out / 'runs'}"]
    if subprocess.run([*sweep, *a.overrides], cwd=ROOT).returncode != 0:
        print("error: the privacy sweep failed (see above)", file=sys.stderr)
        return 1
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(out / "runs"), "--out", str(out)])
    if done.returncode == 0:
        print(f"privacy-utility curve: {out / 'privacy_utility.png'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
