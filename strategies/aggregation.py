"""Aggregation maths in plain functions (numpy only), as Flower keeps its ``strategy_utils``.

:func:`weighted_average` is the reference FedAvg that tests compare every secure path against;
:func:`weighted_mean` averages the hospitals' metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Reference FedAvg: the mean of ``arrays`` weighted by ``weights`` (e.g. example counts)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != len(arrays) or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per array, with a positive total")
    return np.tensordot(w / w.sum(), np.stack([np.asarray(a, np.float64) for a in arrays]), axes=1)


def weighted_mean(pairs: Sequence[tuple[float | None, int]]) -> float:
    """Mean of the finite values in ``(value, weight)`` pairs with positive weight; NaN when none."""
    kept = [(float(v), n) for v, n in pairs if v is not None and np.isfinite(float(v)) and n > 0]
    if not kept:
        return float("nan")
    return float(sum(v * n for v, n in kept) / sum(n for _, n in kept))
