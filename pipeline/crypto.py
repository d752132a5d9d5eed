"""CKKS contexts and ciphertext chunks (TenSEAL; Cheon et al. 2017).

Hospitals share one secret context and encrypt with it symmetrically (less noise than public-key
encryption, and no public key is needed: nobody but the key holders ever encrypts). The server
gets :func:`server_context_bytes`: the encryption parameters and nothing else, so it can add
ciphertexts but holds no key at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tenseal as ts
from omegaconf import DictConfig

SECRET_FILE = "hospitals_secret.ctx"
SERVER_FILE = "server_public.ctx"


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


def load_context(data: bytes) -> ts.Context:
    return ts.context_from(data)


def encrypt_slots(ctx: ts.Context, slots: np.ndarray, degree: int) -> list[bytes]:
    """Encrypt ``slots`` as one ciphertext per ``degree / 2`` values; returns serialised chunks."""
    n = degree // 2
    return [ts.ckks_vector(ctx, slots[i : i + n].tolist()).serialize() for i in range(0, len(slots), n)]


def decrypt_chunks(ctx: ts.Context, chunks: list[bytes]) -> np.ndarray:
    """Decrypt serialised chunks (needs the secret context) into one float64 array."""
    return np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), dtype=np.float64) for c in chunks])


def write_key_files(enc: DictConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Generate a key pair: the hospitals' secret file and the server's parameters-only file (mode 0600)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx = make_secret_context(enc)
    secret, server = out / SECRET_FILE, out / SERVER_FILE
    for path, data in ((secret, secret_context_bytes(ctx)), (server, server_context_bytes(ctx))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return secret, server
