"""List, or remove, the private folders of abandoned runs (keys, privacy ledgers, deployment workspaces).

    python scripts/cleanup.py [--hospital-dir DIR] [--older-than-days N] [--delete] [--include-unknown]

Looks at ``federation.hospital_dir`` (``~/.fedmed/hospitals`` by default). A private folder is
abandoned when its run folder is gone, or its run completed more than N days ago (7 by default),
and no live run holds it. Without ``--delete`` it only lists them (path, size, why); with
``--delete`` it removes them and names each. Folders without ``owner.json`` (unknown owner) are
removed only with ``--include-unknown``; a locked folder is never removed. See
:mod:`pipeline.engines.cleanup`.
"""

import sys

from pipeline.engines.cleanup import main

if __name__ == "__main__":
    sys.exit(main())
