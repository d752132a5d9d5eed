"""Privacy attacks on a finished run (thin wrapper around :func:`pipeline.analysis.attacks.cli.main`).

    python scripts/attack.py RUN_DIR [--batch-size 4] [--iterations 1000] [--tv 0.3] [--seed 0]
                                     [--hospital 0] [--data-root DIR] [--device cpu] [--skip inversion|membership]

Gradient inversion (Geiping et al. 2020) against one hospital's update in three settings (plaintext,
DP-SGD, CKKS-encrypted) and a loss-threshold membership inference (Yeom et al. 2018) against the
final global model. Writes RUN_DIR/attack/report.json, report.md and inversion_grid.png, and prints
the Markdown report. Exit code 2 on bad input (no such folder, no config.yaml or model.pt).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.analysis.attacks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
