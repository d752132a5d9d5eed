"""Generate the key files for a real deployment.

    python scripts/keygen.py --out keys/ [encryption.poly_modulus_degree=... other overrides]

Writes ``hospitals_secret.ctx`` (hand to every hospital over a secure channel) and
``server_public.ctx`` (parameters only; hand to the aggregation server). Both mode 0600.
"""

import sys

from pipeline.secagg.keys import main

if __name__ == "__main__":
    sys.exit(main())
