"""The round aggregates a run keeps on disk: encrypted sums (or plaintext sums) plus their weights.

The server writes one file per round; the key-holding consortium replays them from the public
initial weights to rebuild the final model (:mod:`pipeline.secagg.consortium`). A file holds a
JSON header line (round, total weight, count, the server-optimizer step the hospitals apply) and
then the raw payload bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from pipeline.reporting.atomic import write_atomic
from pipeline.secagg.wire import Payload, digest
from strategies.server_optimizers import ServerOptimizer, State

AGGREGATES_DIR = "aggregates"


@dataclass
class Aggregate:
    """The sum of one round's weighted updates, with the plaintext total weight and count.

    ``server_optimizer`` is the step every key holder applies to the decoded mean update
    (:mod:`strategies.server_optimizers`; FedAvg's plain step when empty). ``unmask`` holds what
    removes the masks of an encrypted sum (:func:`pipeline.secagg.masks.correction_from`): the
    survivors, their self-mask seeds and the pair seeds with hospitals that dropped out.
    """

    round: int
    payload: Payload
    total_weight: float
    count: int
    server_optimizer: dict = field(default_factory=dict)
    unmask: dict = field(default_factory=dict)

    def to_record(self) -> ArrayRecord:
        """The aggregate as Flower's ArrayRecord (what a Strategy's ``aggregate_train`` returns).

        Plaintext sums are one float32 array; ciphertext chunks travel as opaque byte arrays.
        """
        p = self.payload
        meta = {"round": self.round, "total_weight": self.total_weight, "count": self.count}
        meta.update({"fingerprint": p.fingerprint, "server_optimizer": self.server_optimizer, "unmask": self.unmask})
        arrays = {_META: _text_array(json.dumps(meta))}
        if p.values is not None:
            arrays[_VALUES] = Array(np.ascontiguousarray(p.values, np.float32))
        else:
            for i, chunk in enumerate(p.chunks or []):
                arrays[f"{_CHUNK}{i:05d}"] = Array(dtype="bytes", shape=(len(chunk),), stype=_CKKS, data=chunk)
        return ArrayRecord(array_dict=arrays)

    @classmethod
    def from_record(cls, record: ArrayRecord) -> Aggregate:
        """Inverse of :meth:`to_record`."""
        meta = json.loads(record[_META].data.decode())
        if _VALUES in record:
            payload = Payload(values=record[_VALUES].numpy())
        else:
            chunks = [record[k].data for k in sorted(k for k in record if k.startswith(_CHUNK))]
            payload = Payload(chunks=chunks, digest=digest(chunks), fingerprint=str(meta["fingerprint"]))
        return cls(
            int(meta["round"]),
            payload,
            float(meta["total_weight"]),
            int(meta["count"]),
            dict(meta["server_optimizer"] or {}),
            dict(meta.get("unmask") or {}),
        )


_META, _VALUES, _CHUNK, _CKKS = "meta", "values", "chunk-", "tenseal.CKKSVector"


def _text_array(text: str) -> Array:
    data = text.encode()
    return Array(dtype="str", shape=(len(data),), stype="utf-8", data=data)


def save(run_dir: str | Path, agg: Aggregate) -> Path:
    """Write ``agg`` to ``run_dir/aggregates/round_NNN.agg``."""
    folder = Path(run_dir) / AGGREGATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    p = agg.payload
    blobs = [p.values.astype(np.float32).tobytes()] if p.values is not None else list(p.chunks or [])
    header = {
        "round": agg.round,
        "total_weight": agg.total_weight,
        "count": agg.count,
        "kind": "plain" if p.values is not None else "cipher",
        "lengths": [len(b) for b in blobs],
        "digest": p.digest,
        "fingerprint": p.fingerprint,
        "server_optimizer": agg.server_optimizer,
        "unmask": agg.unmask,
    }
    path = folder / f"round_{agg.round:03d}.agg"
    write_atomic(path, json.dumps(header).encode() + b"\n" + b"".join(blobs))
    return path


def remove(run_dir: str | Path, agg_round: int) -> None:
    """Delete round ``agg_round``'s saved aggregate, if any (an attempt the hospitals refused)."""
    (Path(run_dir) / AGGREGATES_DIR / f"round_{agg_round:03d}.agg").unlink(missing_ok=True)


def load(path: str | Path) -> Aggregate:
    """Read one aggregate file written by :func:`save`."""
    raw = Path(path).read_bytes()
    head, _, body = raw.partition(b"\n")
    header = json.loads(head)
    blobs, offset = [], 0
    for n in header["lengths"]:
        blobs.append(body[offset : offset + n])
        offset += n
    if header["kind"] == "plain":
        payload = Payload(values=np.frombuffer(blobs[0], dtype=np.float32).copy())
    else:
        payload = Payload(chunks=blobs, digest=header["digest"], fingerprint=header["fingerprint"])
    return Aggregate(
        int(header["round"]),
        payload,
        float(header["total_weight"]),
        int(header["count"]),
        dict(header.get("server_optimizer") or {}),
        dict(header.get("unmask") or {}),
    )


def load_all(run_dir: str | Path) -> list[Aggregate]:
    """Every saved aggregate of a run, in round order; checks that no round is missing."""
    aggs = sorted((load(p) for p in (Path(run_dir) / AGGREGATES_DIR).glob("round_*.agg")), key=lambda a: a.round)
    for expected, agg in enumerate(aggs, start=1):
        if agg.round != expected:
            raise ValueError(f"{run_dir}: aggregate of round {expected} is missing")
    return aggs


def replay(
    initial: np.ndarray, aggs: list[Aggregate], decode: Callable[[Aggregate], np.ndarray]
) -> tuple[np.ndarray, State]:
    """The global weights after ``aggs``, from the public ``initial`` weights, and the optimizer state.

    Each round's mean update is ``decode(agg) / agg.total_weight`` (the key holders decrypt, the
    plaintext server reads the values), applied with the aggregate's server optimizer, exactly as
    every hospital applies it round by round.

    Raises:
        ValueError: the aggregates name different server optimizers.
    """
    specs = {json.dumps(a.server_optimizer, sort_keys=True) for a in aggs}
    if len(specs) > 1:
        raise ValueError(f"the aggregates name {len(specs)} different server optimizers; a run uses one")
    optimizer = ServerOptimizer.from_spec(aggs[0].server_optimizer if aggs else None)
    weights, state = np.asarray(initial), {}
    for agg in aggs:
        weights, state = optimizer.step(weights, decode(agg) / agg.total_weight, state)
    return weights, state
