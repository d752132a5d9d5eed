"""FedAvg (McMahan et al. 2017) over plaintext or CKKS-encrypted updates; FedProx via proximal_mu.

The maths is the weighted mean ``sum_k n_k w_k / sum_k n_k``. The server never computes it: it
adds the hospitals' weighted updates (:mod:`strategies.secure_sum`) and the plaintext weights,
and each hospital divides after decoding. :func:`weighted_average` is the numpy reference that
tests compare every path against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from strategies.secure_sum import CiphertextSum, PlainSum

log = logging.getLogger(__name__)


def weighted_average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Reference FedAvg: the mean of ``arrays`` weighted by ``weights`` (e.g. example counts)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != len(arrays) or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per array, with a positive total")
    return np.tensordot(w / w.sum(), np.stack([np.asarray(a, np.float64) for a in arrays]), axes=1)


class FedAvg:
    """Example-weighted FedAvg; with ``proximal_mu > 0`` hospitals add FedProx's proximal term.

    Args:
        proximal_mu: weight of (mu/2)||w - w_global||^2 in each hospital's loss; 0 = plain FedAvg.
    """

    def __init__(self, *, proximal_mu: float = 0.0) -> None:
        if proximal_mu < 0:
            raise ValueError("The proximal term weight proximal_mu should be >= 0.")
        self.proximal_mu = float(proximal_mu)

    def new_sum(self, *, size: int, server_context: bytes | None, num_chunks: int = 0) -> PlainSum | CiphertextSum:
        """An empty running sum for one round: encrypted when a server context is given."""
        if server_context is None:
            return PlainSum(size=size)
        return CiphertextSum(server_context=server_context, num_chunks=num_chunks)

    def summary(self) -> None:
        name = "FedProx" if self.proximal_mu > 0 else "FedAvg"
        log.info("%s (weighted by training examples), proximal_mu=%g", name, self.proximal_mu)
