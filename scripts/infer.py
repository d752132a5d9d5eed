"""Inference with a finished run's final model (thin wrapper around :func:`pipeline.inference.cli.main`).

    python scripts/infer.py RUN_DIR IMAGES...      image files, folders, manifest .csv files
    python scripts/infer.py RUN_DIR --split test [--data-root DIR]
    python scripts/infer.py RUN_DIR --split test --encrypted [--batch-size 624] [--limit N]

Writes RUN_DIR/inference/predictions.csv and summary.json; with --encrypted also report.json and
report.md (the data owner's CKKS key never leaves this process; the model owner runs in its own
process). Exit code 2 on bad input (one line).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.inference.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
