"""The command line, ``fedmed-attack`` / ``python scripts/attack.py RUN_DIR``: :func:`parse_args` and
:func:`main`."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from pipeline.analysis.attacks.report import ATTACK_DIR, GRID_PNG, REPORT_JSON, REPORT_MD, report_markdown, write_report
from pipeline.analysis.attacks.run import AttackError, AttackOptions, attack_run
from pipeline.heap import quick_exit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options (``argv`` ``None``: ``sys.argv[1:]``); bad values exit through argparse."""
    p = argparse.ArgumentParser(
        prog="fedmed-attack",
        description="Gradient inversion and membership inference against a finished run; writes RUN_DIR/attack/.",
    )
    p.add_argument("run_dir", help="a run folder (config.yaml, model.pt, summary.json)")
    p.add_argument("--batch-size", type=int, default=4, help="images in the attacked batch (default 4)")
    p.add_argument("--iterations", type=int, default=1000, help="inversion iterations (default 1000)")
    p.add_argument("--tv", type=float, default=0.3, help="total-variation weight (default 0.3)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam step size on the dummy images (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="batch choice, DP noise, attack start (default 0)")
    p.add_argument("--hospital", type=int, default=0, help="attacked hospital (default 0)")
    p.add_argument("--data-root", default=None, help="override data.root (the run's is relative to where it ran)")
    p.add_argument("--device", default="cpu", help="torch device for the attacks (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip", choices=("inversion", "membership"), action="append", default=[], help="skip an attack")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.iterations < 1 or args.tv < 0 or args.lr <= 0 or (args.threads or 1) < 1:
        p.error("--batch-size, --iterations and --threads must be >= 1, --tv >= 0, --lr > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``fedmed-attack``); returns the exit code (0 ok, 2 bad input)."""
    args = parse_args(argv)
    quick_exit()  # no walk of the imported libraries' heap at exit (pipeline.heap)
    opts = AttackOptions(
        batch_size=args.batch_size,
        iterations=args.iterations,
        tv=args.tv,
        lr=args.lr,
        seed=args.seed,
        hospital=args.hospital,
        data_root=args.data_root,
        device=args.device,
        skip=list(args.skip),
    )
    run_dir = Path(args.run_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"opacus\.")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        report, images = attack_run(run_dir, opts, log)
    except AttackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = run_dir / ATTACK_DIR
    try:
        write_report(report, images, out)
    except OSError as err:
        print(f"error: cannot write the report to {out}: {err}", file=sys.stderr)
        return 1
    print(report_markdown(report))
    print(f"report: {out / REPORT_MD} (+ {REPORT_JSON}" + (f", {GRID_PNG})" if "inversion" in report else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
