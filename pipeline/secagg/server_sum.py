"""Running sums of hospital updates, added in place as replies arrive.

:class:`PlainSum` adds float32 vectors (plain FedAvg); :class:`CiphertextSum` adds CKKS
ciphertexts with a context that holds the encryption parameters and no key, so the server can
add but never decrypt. Neither imports the hospitals' key handling: the server process has no
way to load a secret context through this module.

Each sum checks a reply before adding it and returns the problem as text (``None`` when the
reply is fine), so the server loop can drop it with a log line naming the hospital.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from pipeline.secagg.wire import Payload, digest, fingerprint


class PlainSum:
    """Sum of plaintext update vectors of a known length."""

    def __init__(self, *, size: int) -> None:
        if size <= 0:
            raise ValueError("The update size should be a positive number of values.")
        self.size = size
        self.total: np.ndarray | None = None

    def problem(self, payload: Payload) -> str | None:
        if payload.values is None:
            return "sent ciphertexts to a plaintext aggregation"
        if payload.values.shape != (self.size,):
            return f"update has shape {payload.values.shape}, expected ({self.size},)"
        if not np.all(np.isfinite(payload.values)):
            return "update holds NaN or infinite values"
        return None

    def add(self, payload: Payload) -> None:
        if self.total is None:
            self.total = payload.values.astype(np.float64).copy()
        else:
            self.total += payload.values

    def result(self) -> Payload:
        if self.total is None:
            raise ValueError("nothing was added")
        return Payload(values=self.total.astype(np.float32))


class CiphertextSum:
    """Sum of CKKS ciphertext chunk lists, checked against the server's parameter-only context."""

    def __init__(self, *, server_context: bytes, num_chunks: int) -> None:
        ctx = ts.context_from(server_context)
        if ctx.has_secret_key():
            raise ValueError("The server context must not hold a secret key.")
        if num_chunks <= 0:
            raise ValueError("The number of ciphertext chunks should be positive.")
        self.ctx = ctx
        self.fingerprint = fingerprint(server_context)
        self.num_chunks = num_chunks
        self.total: list[ts.CKKSVector] | None = None

    def _vectors(self, payload: Payload) -> list[ts.CKKSVector]:
        return [ts.ckks_vector_from(self.ctx, c) for c in payload.chunks or []]

    def problem(self, payload: Payload) -> str | None:
        if payload.chunks is None:
            return "sent a plaintext update to an encrypted aggregation"
        if payload.fingerprint != self.fingerprint:
            return f"encryption parameters {payload.fingerprint or '?'} differ from the server's {self.fingerprint}"
        if len(payload.chunks) != self.num_chunks:
            return f"sent {len(payload.chunks)} ciphertext chunks, expected {self.num_chunks}"
        if digest(payload.chunks) != payload.digest:
            return "ciphertext digest mismatch (truncated or altered in transit)"
        try:
            self._vectors(payload)
        except Exception as err:  # SEAL raises several types for malformed data
            return f"ciphertext does not load with the server's parameters ({str(err).splitlines()[0]})"
        return None

    def add(self, payload: Payload) -> None:
        vectors = self._vectors(payload)
        if self.total is None:
            self.total = vectors
        else:
            for acc, v in zip(self.total, vectors, strict=True):
                acc += v  # in place: the server keeps one running sum, not every reply

    def result(self) -> Payload:
        if self.total is None:
            raise ValueError("nothing was added")
        chunks = [v.serialize() for v in self.total]
        return Payload(chunks=chunks, digest=digest(chunks), fingerprint=self.fingerprint)


def new_sum(*, size: int, server_context: bytes | None, num_chunks: int = 0) -> PlainSum | CiphertextSum:
    """An empty running sum for one round: encrypted when a server context is given."""
    if server_context is None:
        return PlainSum(size=size)
    return CiphertextSum(server_context=server_context, num_chunks=num_chunks)
