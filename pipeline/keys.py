"""Generating the CKKS key files: one secret file for the hospitals, one parameters-only file for the server.

Run as its own process (``python -m pipeline.keys --out DIR [overrides]``) so that the process that
later runs the server never holds the secret key, not even briefly. ``scripts/keygen.py`` is the
same command for real deployments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipeline.crypto import write_key_files

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the two key files (created with mode 0700)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encryption.poly_modulus_degree=8192")
    args = parser.parse_args(argv)
    from pipeline.config import validate
    from pipeline.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["encryption=ckks", *args.overrides])
    try:
        cfg = validate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    secret, server = write_key_files(cfg.encryption, args.out)
    print(f"hospitals' secret context: {secret}  (give to every hospital; never to the server)")
    print(f"server context:            {server}  (parameters only, no key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
