"""Compare finished runs (thin wrapper around :func:`pipeline.analysis.compare.cli.main`).

    python scripts/compare.py RUN_OR_MULTIRUN_DIR [...] [--out comparison] [--strict]

Writes comparison.md, comparison.csv (comparison_by_seed.csv for seed repeats), val_auc.png,
privacy_utility.png and cost.png into --out, and prints the table. Run folders without summary.json
(failed runs) are skipped with a warning; --strict makes them an error. Exit code 2 on bad input.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.analysis.compare.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
