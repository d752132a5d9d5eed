"""What one hospital keeps between messages: its copy of the global model, its optimizer state, its ledger,
its part of the secure-aggregation protocol (this run's agreement key, the unmask answers it gave)
and its last train reply (re-sent, never re-trained, when a resumed server asks for the same round).

The state lives in the hospital's own file (node config ``state-dir``), written atomically and
owner-only, never in Flower's node context: in a simulation the context travels back to the
process that runs the server, which must never see a decrypted model or a privacy ledger.
A per-process cache spares re-reading the file for every message; it is keyed by the file's inode
and modification time, so a state written by another process (another Ray worker) is re-read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.reporting.atomic import write_atomic

_OPT_PREFIX = "opt_"


@dataclass
class HospitalState:
    """A hospital's model round, global weights (None: the public initial ones), ledger and optimizer state."""

    path: Path
    model_round: int = 0
    weights: np.ndarray | None = None
    ledger: str = ""
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    secagg: str = ""  # JSON: this run's agreement key and the unmask answers given (pipeline.secagg.protocol)
    sent: bytes = b""  # the last train reply (serialised), re-sent when the same round is asked again
    sent_for: str = ""  # which request it answers: "round:attempt:model round" (see HospitalClient.train)

    @classmethod
    def load(cls, path: str | Path) -> HospitalState:
        """The state saved at ``path``, or a fresh one (round 0) when there is none yet."""
        path = Path(path)
        stamp = _stamp(path)
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1].copy()
        state = cls(path)
        if stamp is not None:
            with np.load(path) as saved:
                state.model_round = int(saved["model_round"])
                state.ledger = str(saved["ledger"])
                state.secagg = str(saved["secagg"]) if "secagg" in saved else ""
                state.sent = saved["sent"].tobytes() if "sent" in saved else b""
                state.sent_for = str(saved["sent_for"]) if "sent_for" in saved else ""
                state.weights = saved["weights"].copy() if "weights" in saved else None
                state.optimizer = {k[len(_OPT_PREFIX) :]: saved[k].copy() for k in saved if k.startswith(_OPT_PREFIX)}
        _CACHE[path] = (stamp, state.copy())
        return state

    def save(self) -> None:
        """Write the state to its file (atomically, 0600) and refresh the cache."""
        arrays: dict[str, np.ndarray] = {
            "model_round": np.int64(self.model_round),
            "ledger": np.array(self.ledger),
            "secagg": np.array(self.secagg),
            "sent": np.frombuffer(self.sent, dtype=np.uint8),
            "sent_for": np.array(self.sent_for),
        }
        if self.weights is not None:
            arrays["weights"] = self.weights.astype(np.float32)
        arrays.update({_OPT_PREFIX + k: v for k, v in self.optimizer.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(self.path, buf.getvalue(), private=True)
        _CACHE[self.path] = (_stamp(self.path), self.copy())

    def copy(self) -> HospitalState:
        """An independent copy (arrays copied)."""
        return HospitalState(
            self.path,
            self.model_round,
            None if self.weights is None else self.weights.copy(),
            self.ledger,
            {k: v.copy() for k, v in self.optimizer.items()},
            self.secagg,
            self.sent,
            self.sent_for,
        )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file's current version (None when it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


_CACHE: dict[Path, tuple[tuple[int, int, int] | None, HospitalState]] = {}
