"""Hospital side of an update: encode before sending, decode an aggregate after receiving.

Each hospital sends ``u_k = (n_k / n_ref) * (w_k - w_global)``: its weighted model change. The
server adds the u_k of whoever replied and the weights n_k / n_ref; a hospital decodes the sum
and divides by the total weight, giving FedAvg's sum_k n_k w_k / sum_k n_k for any set of replies.
:class:`PlainCodec` sends float32 as it is; :class:`CkksCodec` quantises, packs and encrypts.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts
from omegaconf import DictConfig

from pipeline.secagg import quantize
from pipeline.secagg.params import slots_per_chunk, value_bits
from pipeline.secagg.wire import Payload, digest, fingerprint


class PlainCodec:
    """``encryption=none``: the update travels as a float32 vector."""

    def encode(self, update: np.ndarray, rng: np.random.Generator) -> Payload:
        """The update as it is (float32)."""
        return Payload(values=update.astype(np.float32))

    def decode(self, aggregate: Payload, count: int, size: int | None = None) -> np.ndarray:
        """The summed updates; ``count`` (number of summands) is only needed by quantised codecs."""
        if aggregate.values is None:
            raise ValueError("expected a plaintext aggregate, got ciphertexts (encryption settings differ)")
        return aggregate.values.astype(np.float64)[:size]


class CkksCodec:
    """``encryption=ckks``: quantise (stochastic rounding), pack several values per slot, encrypt (secret key)."""

    def __init__(self, secret_context: ts.Context, server_bytes: bytes, enc: DictConfig, num_hospitals: int) -> None:
        if not secret_context.has_secret_key():
            raise ValueError("CkksCodec needs the hospitals' secret context")
        self.ctx = secret_context
        self.enc = enc
        self.bits = value_bits(enc, num_hospitals)
        self.fingerprint = fingerprint(server_bytes)

    def encode(self, update: np.ndarray, rng: np.random.Generator) -> Payload:
        """Quantise, pack and encrypt ``update`` into ciphertext chunks."""
        ints = quantize.quantize(update, float(self.enc.clip), self.bits, rng)
        slots = quantize.pack(ints, int(self.enc.fields_per_slot), int(self.enc.field_bits))
        n = slots_per_chunk(self.enc)
        chunks = [ts.ckks_vector(self.ctx, slots[i : i + n].tolist()).serialize() for i in range(0, len(slots), n)]
        return Payload(chunks=chunks, digest=digest(chunks), fingerprint=self.fingerprint)

    def decode(self, aggregate: Payload, count: int, size: int | None = None) -> np.ndarray:
        """Decrypt, unpack and dequantise the sum of ``count`` updates (first ``size`` values)."""
        if aggregate.chunks is None:
            raise ValueError("expected ciphertexts, got a plaintext aggregate (encryption settings differ)")
        slots = np.concatenate(
            [np.asarray(ts.ckks_vector_from(self.ctx, c).decrypt(), dtype=np.float64) for c in aggregate.chunks]
        )
        n = size if size is not None else len(slots) * int(self.enc.fields_per_slot)
        ints = quantize.unpack(slots, n, int(self.enc.fields_per_slot), int(self.enc.field_bits))
        return quantize.dequantize_sum(ints, count, float(self.enc.clip), self.bits)


def clipped_fraction(update: np.ndarray, enc: DictConfig) -> float:
    """Share of update values beyond the quantiser's range (a sign that encryption.clip is too small)."""
    return float(np.mean(np.abs(update) > float(enc.clip))) if enc.enabled else 0.0
