"""Fault injection for testing failure handling through the real simulation (chaos testing).

Set ``FEDMED_FAULTS`` to a comma-separated list of ``hospital:round:kind`` before starting a run,
e.g. ``FEDMED_FAULTS=1:2:crash,2:2:corrupt``. Kinds:

- ``crash``: the hospital raises during training (Flower returns an error reply);
- ``nan``: local training yields NaN weights (the hospital must refuse to send them);
- ``corrupt``: one byte of the first ciphertext chunk is flipped after encryption (in transit);
- ``stale``: the reply carries the previous round number.

Nothing is injected when the variable is unset, which is always the case outside tests.
"""

from __future__ import annotations

import os

ENV = "FEDMED_FAULTS"
KINDS = ("crash", "nan", "corrupt", "stale")


def planned(hospital: int, rnd: int) -> set[str]:
    """The faults to inject for ``hospital`` in round ``rnd``."""
    out = set()
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        h, r, kind = item.strip().split(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown fault kind {kind!r}; use one of {KINDS}")
        if int(h) == hospital and int(r) == rnd:
            out.add(kind)
    return out


class InjectedFault(RuntimeError):
    """A failure raised on purpose by :mod:`pipeline.faults`."""
