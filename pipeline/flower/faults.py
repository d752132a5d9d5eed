"""Fault injection for tests and chaos runs through the real engines: a Flower ClientApp mod.

Set ``FEDMED_FAULTS`` to a comma-separated list of ``hospital:round:kind`` before starting a run,
e.g. ``FEDMED_FAULTS=1:2:crash,2:2:corrupt``. Hospital kinds:

- ``crash``: the hospital raises instead of handling the train message (Flower returns an error reply);
- ``nan``: local training yields NaN weights (the hospital must refuse to send them);
- ``corrupt``: one byte of the first ciphertext chunk is flipped after encryption (in transit);
- ``stale``: the reply carries the previous round number;
- ``wrong_key``: the hospital encrypts its update under another CKKS key with the same parameters;
- ``down``: the hospital is off for the whole round: it receives no message of that round
  (train, unmask, evaluate) and so answers none, on every attempt. It comes back on its own the
  round after, holding the model it had, and must catch up (the server's grid drops the messages,
  as a machine that is off never gets them).

Server kinds (``server:round:kind``):

- ``forge``: the server sends one hospital's reply as the round's aggregate, claiming the round's
  count, weight and unmask information.

Every fault but ``down`` strikes the first attempt at its round only; a round the checks abandon
is retried without it. The hospitals' faults come from a ClientApp mod (:mod:`.fault_mod`), installed only when the
variable is set; the server's faults wrap the strategy only then (:func:`wrap_strategy`). That is
never the case outside tests and chaos runs; the production code contains no injection point.
This module (the plan and the server's faults) is what the server imports; it reaches nothing of
the hospitals' side.
"""

from __future__ import annotations

import os

ENV = "FEDMED_FAULTS"
KINDS = ("crash", "nan", "corrupt", "stale", "wrong_key", "down")
SERVER_KINDS = ("forge",)
SERVER = "server"


class InjectedFault(RuntimeError):
    """A failure raised on purpose by this mod."""


def _entries() -> list[tuple[str, int, str]]:
    out = []
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        parts = item.strip().split(":")
        kinds = SERVER_KINDS if parts[0] == SERVER else KINDS
        if len(parts) != 3 or parts[2] not in kinds:
            raise ValueError(
                f"{ENV}: {item!r} is not hospital:round:kind with a kind in {KINDS} (server: {SERVER_KINDS})"
            )
        out.append((parts[0], int(parts[1]), parts[2]))
    return out


def planned(hospital: int, rnd: int) -> set[str]:
    """The faults ``FEDMED_FAULTS`` plans for ``hospital`` in round ``rnd``."""
    return {kind for who, r, kind in _entries() if who != SERVER and int(who) == hospital and r == rnd}


def server_planned(rnd: int) -> set[str]:
    """The server's faults ``FEDMED_FAULTS`` plans for round ``rnd``."""
    return {kind for who, r, kind in _entries() if who == SERVER and r == rnd}


def _down() -> set[tuple[int, int]]:
    """(hospital, round) pairs planned ``down``."""
    return {(int(who), r) for who, r, kind in _entries() if who != SERVER and kind == "down"}


def wrap_strategy(strategy):
    """``strategy`` with the planned faults the server side plays (``server:R:kind``, ``H:R:down``),
    or unchanged when none are planned."""
    down = _down()
    if not down and not any(who == SERVER for who, _, _ in _entries()):
        return strategy
    import logging

    from pipeline.flower import messages as M
    from pipeline.secagg.aggregates import Aggregate
    from pipeline.secagg.wire import Payload

    log = logging.getLogger("fedmed.faults")
    base = type(strategy)

    class Faulty(base):  # type: ignore[misc, valid-type]
        """Forges the round's aggregate (``forge``) and keeps messages from hospitals that are ``down``."""

        def configure_train(self, server_round, arrays, config, grid):
            self._first_payload = None
            return super().configure_train(server_round, arrays, config, grid)

        def add_train_reply(self, node, reply):
            if self._first_payload is None and reply.has_content() and not reply.has_error():
                self._first_payload = Payload.get(reply.content)
            super().add_train_reply(node, reply)

        def configure_evaluate(self, server_round, arrays, config, grid):
            if "forge" in server_planned(server_round) and self.attempt == 0 and self._first_payload is not None:
                agg = Aggregate.from_record(arrays)
                agg.payload = self._first_payload
                arrays = agg.to_record()
            return super().configure_evaluate(server_round, arrays, config, grid)

        def _exchange(self, grid, messages, timeout, on_reply=None, phase=""):
            kept = []
            for msg in messages:
                site = self.sites.get(msg.metadata.dst_node_id)
                rnd = msg.content[M.CONFIG].get(M.ROUND) if M.CONFIG in msg.content else None
                if site is not None and rnd is not None and (site.hospital, int(rnd)) in down:
                    log.warning(
                        "round %s: hospital %d is down (fault injection): no %s message",
                        rnd,
                        site.hospital,
                        phase or "",
                    )
                else:
                    kept.append(msg)
            return super()._exchange(grid, kept, timeout, on_reply, phase)

    strategy.__class__ = type(f"Faulty{base.__name__}", (Faulty,), {})
    return strategy
