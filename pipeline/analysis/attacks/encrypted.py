"""The encrypted setting: what the server holds of a hospital's update with CKKS encryption on.

The server receives the CKKS ciphertext chunks (:class:`pipeline.secagg.codec.CkksCodec`) and holds
the parameters-only context; decrypting is attempted and the failure recorded. There is no gradient
to invert, so no reconstruction is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig


@dataclass
class EncryptedView:
    """What the server holds of one hospital's update with encryption on."""

    chunks: int
    payload_bytes: int
    values: int
    plaintext_values: bool  # does the payload carry any plaintext update values?
    server_has_secret_key: bool
    decrypt_error: str | None  # exception type and message when the server tries to decrypt
    key_holder_max_error: float  # the hospitals can decode the same payload (quantisation error)
    gradient: None = None  # nothing to invert

    def as_dict(self) -> dict[str, Any]:
        """The view as the report's ``inversion.encrypted`` entries (JSON-ready)."""
        return {
            "chunks": self.chunks,
            "payload_bytes": self.payload_bytes,
            "bytes_per_value": self.payload_bytes / max(self.values, 1),
            "plaintext_values": self.plaintext_values,
            "server_has_secret_key": self.server_has_secret_key,
            "server_decrypt_error": self.decrypt_error,
            "key_holder_max_abs_error": self.key_holder_max_error,
        }


def encrypted_view(update: np.ndarray, enc: DictConfig, num_hospitals: int, seed: int = 0) -> EncryptedView:
    """Encrypt ``update`` exactly as a hospital does and look at it with the server's context.

    A fresh key is generated (the run's key was deleted after the run). The server's context is the
    parameters-only serialisation (:func:`pipeline.secagg.keys.server_context_bytes`); decrypting a chunk
    with it is attempted and the exception recorded. The key holders' decode is checked too, so the
    payload demonstrably carries the update.
    """
    import tenseal as ts

    from pipeline.secagg import keys
    from pipeline.secagg.codec import CkksCodec

    secret = keys.make_secret_context(enc)
    server_bytes = keys.server_context_bytes(secret)
    codec = CkksCodec(secret, server_bytes, enc, num_hospitals)
    payload = codec.encode(update, np.random.default_rng(seed))
    server = ts.context_from(server_bytes)
    error = None
    try:
        ts.ckks_vector_from(server, payload.chunks[0]).decrypt()
    except Exception as err:  # TenSEAL raises ValueError; any failure is the point
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    decoded = codec.decode(payload, 1, len(update))
    clip = float(enc.clip)
    return EncryptedView(
        chunks=len(payload.chunks),
        payload_bytes=payload.nbytes,
        values=len(update),
        plaintext_values=payload.values is not None,
        server_has_secret_key=bool(server.has_secret_key()),
        decrypt_error=error,
        key_holder_max_error=float(np.max(np.abs(decoded - np.clip(update, -clip, clip)))),
    )
