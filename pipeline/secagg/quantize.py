"""Quantising update values and packing several into one CKKS slot (pure numpy).

Each value is clipped to [-clip, clip] and stochastically rounded to an integer in
[0, 2^bits - 1] (unbiased). ``fields`` integers of ``field_bits`` bits share one slot; the
``field_bits - bits`` spare bits are headroom, so that the sum over all hospitals of each field
never carries into the next one. Decrypting the summed ciphertext and unpacking gives the exact
integer sums, which :func:`dequantize_sum` turns back into the sum of the values.
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
    """Put ``fields`` consecutive integers into one float64 slot value (zero-padded at the end)."""
    padded = np.zeros(-(-len(ints) // fields) * fields, dtype=np.int64)
    padded[: len(ints)] = ints
    shifts = np.left_shift(np.int64(1), field_bits * np.arange(fields, dtype=np.int64))
    return (padded.reshape(-1, fields) * shifts).sum(axis=1).astype(np.float64)


def unpack(slots: np.ndarray, count: int, fields: int, field_bits: int) -> np.ndarray:
    """Inverse of :func:`pack` for (rounded, possibly noisy) slot values; returns ``count`` int64."""
    whole = np.rint(slots).astype(np.int64)
    mask = (1 << field_bits) - 1
    parts = [(whole >> (field_bits * j)) & mask for j in range(fields)]
    return np.stack(parts, axis=1).reshape(-1)[:count]
