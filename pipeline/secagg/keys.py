"""CKKS keys (TenSEAL; Cheon et al. 2017): the only module that makes or reads a secret context.

Hospitals share one secret context and encrypt with it symmetrically (less noise than public-key
encryption, and no public key is needed: nobody but the key holders ever encrypts). The server
gets :func:`server_context_bytes`: the encryption parameters and nothing else, so it can add
ciphertexts but holds no key at all.

Key files are made by their own process, so that the process that later runs the server never
holds the secret key, not even briefly::

    python -m pipeline.secagg.keys --out DIR [overrides]      (= python scripts/keygen.py)
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import tenseal as ts
from omegaconf import DictConfig

from pipeline.outputs.atomic import write_atomic
from pipeline.secagg.params import SECRET_FILE, SERVER_FILE


def make_secret_context(enc: DictConfig) -> ts.Context:
    """A fresh CKKS context holding the secret key (for hospitals only)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=int(enc.poly_modulus_degree),
        coeff_mod_bit_sizes=list(enc.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = 2.0 ** int(enc.global_scale_bits)
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """Serialise with the secret key (the file handed to hospitals)."""
    return ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def server_context_bytes(ctx: ts.Context) -> bytes:
    """Serialise the parameters only: no secret key, no public key (the file handed to the server)."""
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


@functools.lru_cache(maxsize=2)
def load_secret_context(path: str) -> tuple[ts.Context, bytes]:
    """The hospitals' secret context from ``path`` and its parameters-only form (cached per process).

    Raises:
        ValueError: the file holds no secret key (e.g. the server's file was given).
    """
    ctx = ts.context_from(Path(path).read_bytes())
    if not ctx.has_secret_key():
        raise ValueError(f"{path} holds no secret key: hospitals need the secret context file")
    return ctx, server_context_bytes(ctx)


def write_key_files(enc: DictConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Generate the hospitals' secret file and the server's parameters-only file (0600 in a 0700 folder)."""
    out = Path(out_dir)
    ctx = make_secret_context(enc)
    secret = write_atomic(out / SECRET_FILE, secret_context_bytes(ctx), private=True)
    server = write_atomic(out / SERVER_FILE, server_context_bytes(ctx), private=True)
    return secret, server


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.secagg.keys --out DIR [overrides]``: write the two key files."""
    parser = argparse.ArgumentParser(description="Generate the CKKS key files for hospitals and server.")
    parser.add_argument("--out", required=True, help="folder for the two key files (created with mode 0700)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encryption.poly_modulus_degree=8192")
    args = parser.parse_args(argv)
    from pipeline.config import compose
    from pipeline.errors import ConfigError

    try:
        cfg = compose("encryption=ckks", *args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    secret, server = write_key_files(cfg.encryption, args.out)
    print(f"hospitals' secret context: {secret}  (give to every hospital; never to the server)")
    print(f"server context:            {server}  (parameters only, no key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
