"""Fault injection for tests and chaos runs through the real engines: a Flower ClientApp mod.

Set ``FEDMED_FAULTS`` to a comma-separated list of ``hospital:round:kind`` before starting a run,
e.g. ``FEDMED_FAULTS=1:2:crash,2:2:corrupt``. Kinds:

- ``crash``: the hospital raises instead of handling the train message (Flower returns an error reply);
- ``nan``: local training yields NaN weights (the hospital must refuse to send them);
- ``corrupt``: one byte of the first ciphertext chunk is flipped after encryption (in transit);
- ``stale``: the reply carries the previous round number.

The mod is installed only when the variable is set (:func:`mods`), which is never the case outside
tests and chaos runs; the production handlers contain no injection point.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from flwr.app import Context, Message

from pipeline.flower import messages as M
from pipeline.flower.context import hospital_id
from pipeline.secagg.wire import CHUNKS, CIPHER

ENV = "FEDMED_FAULTS"
KINDS = ("crash", "nan", "corrupt", "stale")


class InjectedFault(RuntimeError):
    """A failure raised on purpose by this mod."""


def planned(hospital: int, rnd: int) -> set[str]:
    """The faults ``FEDMED_FAULTS`` plans for ``hospital`` in round ``rnd``."""
    out = set()
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        parts = item.strip().split(":")
        if len(parts) != 3 or parts[2] not in KINDS:
            raise ValueError(f"{ENV}: {item!r} is not hospital:round:kind with a kind in {KINDS}")
        if int(parts[0]) == hospital and int(parts[1]) == rnd:
            out.add(parts[2])
    return out


@contextlib.contextmanager
def _poisoned_training() -> Iterator[None]:
    """While active, local training leaves NaN in every parameter (as a diverged run would)."""
    from pipeline.task import training

    real = training.train_round

    def poisoned(cfg, model, *args, **kwargs):
        stats = real(cfg, model, *args, **kwargs)
        for p in model.parameters():
            p.data.view(-1)[::7] = float("nan")
        return stats

    training.train_round = poisoned
    try:
        yield
    finally:
        training.train_round = real


def _corrupt(reply: Message) -> None:
    if reply.has_content() and CIPHER in reply.content:
        chunks = list(reply.content[CIPHER][CHUNKS])
        first = bytearray(chunks[0])
        first[len(first) // 2] ^= 0xFF
        chunks[0] = bytes(first)
        reply.content[CIPHER][CHUNKS] = chunks


def fault_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Inject the faults planned for this hospital and round into a train message's handling."""
    if msg.metadata.message_type != M.TRAIN:
        return call_next(msg, context)
    hospital, rnd = hospital_id(context), int(msg.content[M.CONFIG][M.ROUND])
    injected = planned(hospital, rnd)
    if "crash" in injected:
        raise InjectedFault(f"hospital {hospital} crashes in round {rnd} (fault injection)")
    with _poisoned_training() if "nan" in injected else contextlib.nullcontext():
        reply = call_next(msg, context)
    if "corrupt" in injected:
        _corrupt(reply)
    if "stale" in injected and reply.has_content() and M.CONFIG in reply.content:
        reply.content[M.CONFIG][M.ROUND] = rnd - 1
    return reply


def mods() -> list[Callable]:
    """The ClientApp mods: the fault injector when ``FEDMED_FAULTS`` is set, else none."""
    return [fault_mod] if os.environ.get(ENV) else []
