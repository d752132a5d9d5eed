"""The round aggregates a run keeps on disk: encrypted sums (or plaintext sums) plus their weights.

The server writes one file per round; the key-holding consortium replays them from the public
initial weights to rebuild the final model (:mod:`pipeline.consortium`). A file holds a JSON
header line and then the raw payload bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.records import Payload
from pipeline.results import write_atomic

AGGREGATES_DIR = "aggregates"


@dataclass
class Aggregate:
    """The sum of one round's weighted updates, with the plaintext total weight and count."""

    round: int
    payload: Payload
    total_weight: float
    count: int


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
    }
    path = folder / f"round_{agg.round:03d}.agg"
    write_atomic(path, json.dumps(header).encode() + b"\n" + b"".join(blobs))
    return path


def load(path: str | Path) -> Aggregate:
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
    return Aggregate(int(header["round"]), payload, float(header["total_weight"]), int(header["count"]))


def load_all(run_dir: str | Path) -> list[Aggregate]:
    """Every saved aggregate of a run, in round order; checks that no round is missing."""
    aggs = sorted((load(p) for p in (Path(run_dir) / AGGREGATES_DIR).glob("round_*.agg")), key=lambda a: a.round)
    for expected, agg in enumerate(aggs, start=1):
        if agg.round != expected:
            raise ValueError(f"{run_dir}: aggregate of round {expected} is missing")
    return aggs
