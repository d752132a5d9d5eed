"""Generate the key files for a real deployment.

    python scripts/keygen.py --out keys/ [--force] [encryption.poly_modulus_degree=... other overrides]

Writes ``hospitals_secret.ctx`` (hand to every hospital over a secure channel) and
``server_public.ctx`` (parameters only; hand to the aggregation server). Both mode 0600.

Key files already in ``--out`` (also ``roster.json`` and ``signing/`` keys with ``--roster`` /
``--hospitals``) are never replaced: the command stops with exit status 2 and one line naming
them. ``--force`` replaces them (the hospitals and the server then need the new files).
"""

import sys

from pipeline.secagg.keys import main

if __name__ == "__main__":
    sys.exit(main())
