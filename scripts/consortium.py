"""The key holders' last step: decrypt, test and save a run's final model.

    python scripts/consortium.py RUN_DIR --secret-context hospitals_secret.ctx

Replays the run's encrypted aggregates (RUN_DIR/aggregates) from the public initial weights,
tests the final model on the experiment's test split and writes RUN_DIR/model.pt and the test
metrics into RUN_DIR/summary.json. Run it where the hospitals' secret context is, never on the
server. Same as ``python -m pipeline.secagg.consortium`` and ``fedmed-consortium``.
"""

import sys

from pipeline.secagg.consortium import main

if __name__ == "__main__":
    sys.exit(main())
