"""Quantising update values and packing several into one CKKS slot (pure numpy).

Each value is clipped to [-clip, clip] and stochastically rounded to an integer in
[0, 2^bits - 1] (unbiased). ``fields`` integers of ``field_bits`` bits share one slot (an
integer below 2^(fields x field_bits)); the ``field_bits - bits`` spare bits are headroom, so that
the sum over all hospitals of each field never carries into the next one. The masked, decrypted,
unmasked sum unpacks to the exact integer sums, which :func:`dequantize_sum` turns back into the
sum of the values.
"""

from __future__ import annotations

import numpy as np


def quantize(values: np.ndarray, clip: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Clip to [-clip, clip] and round stochastically onto 2^bits levels; returns int64."""
    levels = (1 << bits) - 1
    scaled = (np.clip(values.astype(np.float64), -clip, clip) + clip) * (levels / (2.0 * clip))
    low = np.floor(scaled)
    up = rng.random(scaled.shape) < (scaled - low)
    return (low + up).astype(np.int64)


def dequantize_sum(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """The sum of ``count`` quantised values whose integer sum is ``total``."""
    levels = (1 << bits) - 1
    return total.astype(np.float64) * (2.0 * clip / levels) - count * clip


def pack(ints: np.ndarray, fields: int, field_bits: int) -> np.ndarray:
    """Put ``fields`` consecutive integers into one uint64 slot value (zero-padded at the end)."""
    padded = np.zeros(-(-len(ints) // fields) * fields, dtype=np.uint64)
    padded[: len(ints)] = ints
    shifts = np.left_shift(np.uint64(1), np.uint64(field_bits) * np.arange(fields, dtype=np.uint64))
    return (padded.reshape(-1, fields) * shifts).sum(axis=1, dtype=np.uint64)


def unpack(slots: np.ndarray, count: int, fields: int, field_bits: int) -> np.ndarray:
    """Inverse of :func:`pack` for integer slot values; returns ``count`` int64 fields."""
    whole = np.asarray(slots).astype(np.uint64)
    mask = np.uint64((1 << field_bits) - 1)
    parts = [(whole >> np.uint64(field_bits * j)) & mask for j in range(fields)]
    return np.stack(parts, axis=1).reshape(-1)[:count].astype(np.int64)


def rounded(slots: np.ndarray) -> np.ndarray:
    """Decrypted (approximate, non-negative) slot values as exact integers (uint64)."""
    return np.rint(np.maximum(slots, 0.0)).astype(np.uint64)
