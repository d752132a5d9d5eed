"""CKKS keys (TenSEAL; Cheon et al. 2017): the only module that makes or reads a secret context.

Hospitals share one secret context and encrypt with it symmetrically (less noise than public-key
encryption, and no public key is needed: nobody but the key holders ever encrypts). The server
gets :func:`server_context_bytes`: the encryption parameters and nothing else, so it can add
ciphertexts but holds no key at all.

Key files are made by their own process, so that the process that later runs the server never
holds the secret key, not even briefly::

    python -m pipeline.secagg.keys --out DIR [--force] [overrides]      (= python scripts/keygen.py)

Existing key files in ``DIR`` are never replaced without ``--force`` (exit status 2, naming them):
new keys would lock every hospital out of what the old ones encrypted. Each file appears whole
under its name or not at all, and without ``--force`` a file made meanwhile by someone else is
never replaced either.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import tenseal as ts
from omegaconf import DictConfig

from pipeline.reporting.atomic import write_atomic
from pipeline.secagg.params import ROSTER_FILE, SECRET_FILE, SERVER_FILE, SIGNING_DIR


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


def write_key_files(enc: DictConfig, out_dir: str | Path, replace: bool = True) -> tuple[Path, Path]:
    """Generate the hospitals' secret file and the server's parameters-only file (0600 in a 0700 folder).

    ``replace=False``: an existing key file is never replaced (FileExistsError).
    """
    out = Path(out_dir)
    ctx = make_secret_context(enc)
    secret = write_atomic(out / SECRET_FILE, secret_context_bytes(ctx), private=True, replace=replace)
    server = write_atomic(out / SERVER_FILE, server_context_bytes(ctx), private=True, replace=replace)
    return secret, server


def key_files(out_dir: str | Path, hospitals: int = 0, roster: bool = False) -> list[Path]:
    """The files ``main`` writes into ``out_dir``: the two contexts, the roster, the signing keys."""
    from pipeline.secagg.agreement import signing_key_file

    out = Path(out_dir)
    files = [out / SECRET_FILE, out / SERVER_FILE]
    if roster or hospitals > 0:
        files.append(out / ROSTER_FILE)
    files += [signing_key_file(out / SIGNING_DIR, h) for h in range(hospitals)]
    return files


def _refuse_existing(existing: list[str]) -> int:
    print(
        f"error: key files exist already: {', '.join(existing)}; give --force to replace them "
        "(every hospital and the server then need the new files)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.secagg.keys --out DIR [--force] [overrides]``: write the key files; the exit status.

    Existing key files in ``--out`` stop it with exit status 2 and one line naming them, unless ``--force``.
    """
    parser = argparse.ArgumentParser(description="Generate the CKKS key files for hospitals and server.")
    parser.add_argument("--out", required=True, help="folder for the two key files (created with mode 0700)")
    parser.add_argument(
        "--hospitals",
        type=int,
        default=0,
        help="also write N hospitals' signing keys (signing/hospital_<i>.key) and their roster (roster.json): "
        "what a simulation's secure aggregation needs; real hospitals sign with their SuperNode keys",
    )
    parser.add_argument(
        "--roster",
        nargs="+",
        default=None,
        metavar="NODE_KEY_PUB",
        help="also write roster.json from the hospitals' SuperNode public keys, hospital 0 first "
        "(e.g. hospital_0/node_key.pub hospital_1/node_key.pub ...): every hospital gets it",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace key files that exist in --out (otherwise they are kept)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encryption.poly_modulus_degree=8192")
    args = parser.parse_args(argv)
    from pipeline.config import compose
    from pipeline.errors import ConfigError

    try:
        cfg = compose("encryption=ckks", *args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    existing = [str(f) for f in key_files(args.out, max(args.hospitals, 0), bool(args.roster)) if os.path.lexists(f)]
    if existing and not args.force:
        return _refuse_existing(existing)
    try:
        return _write(args, cfg)
    except FileExistsError as err:  # made by someone else since the check: still never replaced
        return _refuse_existing([str(err.filename)])


def _write(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Write what ``args`` asks for (replacing existing files only with ``--force``); the exit status."""
    if args.roster:
        from pipeline.secagg.agreement import parse_public_key, write_roster

        public_keys = {}
        for i, name in enumerate(args.roster):
            try:
                public_keys[i] = Path(name).read_bytes().strip()
                parse_public_key(public_keys[i])
            except (OSError, ValueError) as err:
                why = "no such file" if isinstance(err, OSError) else "not an ECDSA public key (OpenSSH .pub or PEM)"
                print(f"error: --roster: hospital {i}'s key {name!r}: {why}", file=sys.stderr)
                return 2
        roster = write_roster(Path(args.out) / ROSTER_FILE, public_keys, replace=args.force)
        print(f"roster of {len(public_keys)} hospitals: {roster}  (give to every hospital; public)")
    secret, server = write_key_files(cfg.encryption, args.out, replace=args.force)
    print(f"hospitals' secret context: {secret}  (give to every hospital; never to the server)")
    print(f"server context:            {server}  (parameters only, no key)")
    if args.hospitals > 0:
        from pipeline.secagg.agreement import write_signing_keys

        # with --roster too, the signing keys' roster replaces the one written just above (as before)
        roster = write_signing_keys(args.out, args.hospitals, replace=args.force or bool(args.roster))
        print(f"signing keys and roster:   {roster.parent / 'signing'}, {roster}  (hospital i: its key + the roster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
