"""Pairwise and self masks on packed slots (Bonawitz et al. 2017), added before CKKS encryption.

Every pair of hospitals (k, j) derives a round seed from the key they agreed
(:mod:`pipeline.secagg.agreement`); k adds ``PRG(seed)`` and j subtracts it, modulo ``2^slot_bits``,
so the masks cancel in the sum and only there. Each hospital also adds a fresh self mask
``PRG(b_k)`` whose seed it Shamir-shares among the others. A single reply, even decrypted by a
key holder, is then uniform: it says nothing about the update.

After a round, the survivors' self-mask seeds (rebuilt from their shares) and the pair seeds
between survivors and hospitals that dropped out are published with the aggregate; anyone can
turn them into the correction that :func:`unmask` removes. The PRG is ChaCha20 (a stream
cipher): Flower's ``pseudo_rand_gen`` seeds NumPy's Mersenne Twister with 32 bits, which a key
holder could search exhaustively.

This module holds no key of any kind and is used by both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.secagg.params import TAG_FIELD_BITS, TAG_FIELDS
from pipeline.secagg.shamir import combine

SEED_BYTES = 32


@dataclass
class Masking:
    """What one hospital adds to its packed update this round: a self mask and one mask per other hospital."""

    me: int
    self_seed: bytes
    pair_seeds: dict[int, bytes] = field(default_factory=dict)


_NONCE = bytes(16)  # every seed is used for one stream only


def prg(seed: bytes, n: int, bits: int) -> np.ndarray:
    """``n`` pseudo-random integers in [0, 2^bits) (uint64) expanded from a 32-byte ``seed`` (ChaCha20)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed has {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * n)), dtype=np.uint64)
    return words & np.uint64((1 << bits) - 1)


def pair_seed(shared_key: bytes, study: str, round_tag: str, a: int, b: int) -> bytes:
    """The seed of the pair of hospitals ``a`` and ``b`` for one round attempt (``round_tag``, e.g. "3.0")."""
    low, high = sorted((int(a), int(b)))
    info = f"fedmed-pair-mask|{study}|{round_tag}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared_key)


def round_check(study: str = "", rnd: int = 0, attempt: int = 0) -> np.ndarray:
    """The round-check fields one contribution adds: 1 (the count), then ``TAG_FIELDS`` values of
    ``TAG_FIELD_BITS`` bits hashed from the study, round and attempt; a sum of ``count``
    contributions of this round shows ``count * round_check(...)`` and an aggregate of another
    round, attempt or study does not."""
    tag = hashlib.sha256(f"fedmed-round-check|{study}|{int(rnd)}|{int(attempt)}".encode()).digest()
    return np.array([1, *(b >> (8 - TAG_FIELD_BITS) for b in tag[:TAG_FIELDS])], dtype=np.int64)


def pair_sign(me: int, other: int) -> int:
    """+1 for the lower-numbered hospital of a pair, -1 for the higher: their masks cancel."""
    return 1 if int(me) < int(other) else -1


def commitment(seed: bytes) -> str:
    """SHA-256 of a self-mask seed: published with the reply, checked when the seed is rebuilt."""
    return hashlib.sha256(seed).hexdigest()


def add_masks(slots: np.ndarray, bits: int, me: int, self_seed: bytes, pair_seeds: dict[int, bytes]) -> np.ndarray:
    """``slots`` (uint64, each < 2^bits) plus the self mask and this hospital's pair masks, mod 2^bits."""
    modulus = np.uint64((1 << bits) - 1)
    out = (slots.astype(np.uint64) + prg(self_seed, len(slots), bits)) & modulus
    for other, seed in pair_seeds.items():
        mask = prg(seed, len(slots), bits)
        out = (out + mask) & modulus if pair_sign(me, other) > 0 else (out - mask) & modulus
    return out


def correction(
    n: int, bits: int, self_seeds: Iterable[bytes], dangling: Iterable[tuple[int, int, bytes]]
) -> np.ndarray:
    """What the sum of the survivors' masked slots carries beyond the plain sum, mod 2^bits.

    ``self_seeds``: the survivors' self-mask seeds. ``dangling``: ``(survivor, dropped, seed)`` for
    each pair whose other half never reached the sum.
    """
    modulus = np.uint64((1 << bits) - 1)
    total = np.zeros(n, dtype=np.uint64)
    for seed in self_seeds:
        total = (total + prg(seed, n, bits)) & modulus
    for survivor, dropped, seed in dangling:
        mask = prg(seed, n, bits)
        total = (total + mask) & modulus if pair_sign(survivor, dropped) > 0 else (total - mask) & modulus
    return total


def unmask(summed: np.ndarray, bits: int, correction_: np.ndarray) -> np.ndarray:
    """The plain sum of the packed slots: ``(summed - correction) mod 2^bits`` (uint64)."""
    modulus = np.uint64((1 << bits) - 1)
    return (summed.astype(np.int64).astype(np.uint64) - correction_) & modulus


def rebuild_seed(shares: list[bytes], expected: str) -> bytes:
    """A self-mask seed from enough Shamir shares; ValueError if it does not match its commitment."""
    try:
        seed = combine(shares)
    except ValueError:
        seed = b""
    if commitment(seed) != expected:
        raise ValueError("the shares do not rebuild the committed self-mask seed")
    return seed


def unmask_info(
    survivors: list[int], self_seeds: dict[int, bytes], dangling: list[tuple[int, int, bytes]], attempt: int = 0
) -> dict:
    """The JSON-ready description of what removes a sum's masks (kept with the aggregate), with the
    round attempt whose masks (and round check) the sum carries."""
    return {
        "survivors": sorted(int(s) for s in survivors),
        "attempt": int(attempt),
        "self_seeds": {str(k): v.hex() for k, v in sorted(self_seeds.items())},
        "dangling": [[int(k), int(d), seed.hex()] for k, d, seed in dangling],
    }


def correction_from(info: dict, n: int, bits: int) -> np.ndarray:
    """The correction of :func:`correction` described by an :func:`unmask_info` dict (zeros when empty)."""
    seeds = [bytes.fromhex(v) for v in (info.get("self_seeds") or {}).values()]
    dangling = [(int(k), int(d), bytes.fromhex(seed)) for k, d, seed in info.get("dangling") or []]
    return correction(n, bits, seeds, dangling)
