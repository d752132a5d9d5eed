"""The hospitals' fault injection for tests and chaos runs: a Flower ClientApp mod.

Reads the plan of :mod:`pipeline.flower.faults` (``FEDMED_FAULTS=hospital:round:kind``) and injects
``crash``, ``nan``, ``corrupt``, ``stale`` and ``wrong_key`` into a hospital's handling of a train
message. Installed only when the variable is set (:func:`mods`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from flwr.app import Context, Message

from pipeline.flower import messages as M
from pipeline.flower.context import hospital_id
from pipeline.flower.faults import ENV, InjectedFault, planned
from pipeline.secagg.wire import CHUNKS, CIPHER


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


@contextlib.contextmanager
def _another_key() -> Iterator[None]:
    """While active, the hospital encrypts under a fresh CKKS key with the same parameters (not the shared one)."""
    from pipeline.secagg import keys
    from pipeline.secagg.codec import CkksCodec

    real = CkksCodec.encrypt

    def under_another_key(self, slots):
        shared, self.ctx = self.ctx, keys.make_secret_context(self.enc)
        try:
            return real(self, slots)
        finally:
            self.ctx = shared

    CkksCodec.encrypt = under_another_key
    try:
        yield
    finally:
        CkksCodec.encrypt = real


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
    conf = msg.content[M.CONFIG]
    hospital, rnd = hospital_id(context), int(conf[M.ROUND])
    injected = planned(hospital, rnd) if int(conf.get(M.ATTEMPT, 0)) == 0 else set()  # a retry is spared
    if "crash" in injected:
        raise InjectedFault(f"hospital {hospital} crashes in round {rnd} (fault injection)")
    with contextlib.ExitStack() as stack:
        if "nan" in injected:
            stack.enter_context(_poisoned_training())
        if "wrong_key" in injected:
            stack.enter_context(_another_key())
        reply = call_next(msg, context)
    if "corrupt" in injected:
        _corrupt(reply)
    if "stale" in injected and reply.has_content() and M.CONFIG in reply.content:
        reply.content[M.CONFIG][M.ROUND] = rnd - 1
    return reply


def mods() -> list[Callable]:
    """The ClientApp mods: the fault injector when ``FEDMED_FAULTS`` is set, else none."""
    return [fault_mod] if os.environ.get(ENV) else []
