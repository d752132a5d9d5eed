"""The wire format of an update or an aggregate, and the checks that detect tampering in transit.

A payload is either a plaintext float32 vector (``encryption=none``) or a list of serialised CKKS
ciphertext chunks. Both travel in the same :class:`flwr.app.RecordDict` slots, so the server and
the hospitals share one code path for either mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

PLAIN = "plain"  # ArrayRecord {"values": float32 vector}
CIPHER = "cipher"  # ConfigRecord {"chunks": [bytes], "digest": str, "fingerprint": str}
CHUNKS = "chunks"
DIGEST = "digest"
FINGERPRINT = "fingerprint"


@dataclass
class Payload:
    """An update or an aggregate: plaintext values or ciphertext chunks (exactly one is set)."""

    values: np.ndarray | None = None
    chunks: list[bytes] | None = None
    digest: str = ""
    fingerprint: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of the values or ciphertexts (what the wire-size figures count)."""
        if self.values is not None:
            return int(self.values.nbytes)
        return int(sum(len(c) for c in self.chunks or []))

    def put(self, content: RecordDict) -> None:
        """Store into ``content`` under the plaintext or ciphertext key."""
        if self.values is not None:
            content[PLAIN] = ArrayRecord(array_dict={"values": Array(np.ascontiguousarray(self.values, np.float32))})
        else:
            content[CIPHER] = ConfigRecord(
                {CHUNKS: list(self.chunks or []), DIGEST: self.digest, FINGERPRINT: self.fingerprint}
            )

    @classmethod
    def get(cls, content: RecordDict) -> Payload | None:
        """Read a payload back from ``content``; None when the message carries none."""
        if PLAIN in content:
            return cls(values=content[PLAIN]["values"].numpy())
        if CIPHER in content:
            rec = content[CIPHER]
            return cls(chunks=list(rec[CHUNKS]), digest=str(rec[DIGEST]), fingerprint=str(rec[FINGERPRINT]))
        return None


def fingerprint(server_context: bytes) -> str:
    """Short id of the CKKS parameters (the server's parameter-only context), shared by all parties."""
    return hashlib.sha256(server_context).hexdigest()[:16]


def digest(chunks: list[bytes]) -> str:
    """SHA-256 over ciphertext chunks: detects truncation or corruption in transit."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()
