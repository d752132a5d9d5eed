"""Where a run's seconds go: phase stopwatches at the hospitals, and each round's split of its wall time.

A hospital times every message it handles by phase (:class:`Stopwatch`) and sends the seconds
back with its reply (``timing`` record): what the server learns from them is no more than the
latency of the reply it already sees. The server times its exchanges, and :func:`round_phases`
splits each round's wall time into the ``phase_*`` columns of ``metrics.csv``, which add up to
the row's ``seconds``:

- per exchange (train, unmask, evaluate), the hospital whose reply came last is the critical path:
  its handler's phases (``setup``, ``decode``, ``train``, ``dp``, ``encode``, ``evaluate``) are
  the round's, the rest of the exchange's wall time is ``send_receive`` (messages in flight and
  waiting for a free worker) less the server's ``aggregate`` (adding replies as they arrive);
- ``other`` is the server's own work between exchanges plus what the critical handlers did
  outside the named phases (state files, ledgers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a hospital times in a message's handler (``total`` is the whole handler).
HOSPITAL_PHASES = ("setup", "decode", "train", "dp", "encode", "evaluate")
# metrics.csv: a round's wall time, split; the columns add up to its ``seconds``.
PHASES = ("setup", "train", "dp", "encode", "send_receive", "aggregate", "decode", "evaluate", "other")
PHASE_COLUMNS = tuple(f"phase_{p}" for p in PHASES)
TOTAL = "total"


@dataclass
class Stopwatch:
    """Seconds per named phase, summed over every ``with watch.phase(name):`` block."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-attribute ``seconds`` of ``source`` to ``target`` (a part measured inside another)."""
        seconds = min(float(seconds), self.seconds.get(source, 0.0))
        self.add(source, -seconds)
        self.add(target, seconds)

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped so that each call's time adds to phase ``name``."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return wrapper

    def report(self, digits: int = 3) -> dict[str, float]:
        """The phases and the ``total`` since the stopwatch started, in seconds rounded to ``digits`` (1 ms)."""
        out = {k: round(v, digits) for k, v in self.seconds.items()}
        out[TOTAL] = round(time.perf_counter() - self.started, digits)
        return out


@dataclass
class ExchangeTime:
    """One exchange of a round: its wall time and the timing the last reply carried (empty if none)."""

    wall: float
    critical: Mapping[str, float] = field(default_factory=dict)


def round_phases(
    seconds: float, exchanges: Sequence[ExchangeTime], aggregate: float, server_evaluate: float = 0.0
) -> dict[str, float]:
    """The ``phase_*`` columns of a round of ``seconds`` wall time; they add up to ``seconds``.

    Args:
        seconds: the round's wall time at the server.
        exchanges: the round's exchanges with the hospitals, in order.
        aggregate: seconds the server spent adding replies (inside the exchanges).
        server_evaluate: seconds the server spent testing the aggregate itself (plaintext runs only).
    """
    out = dict.fromkeys(PHASES, 0.0)
    in_exchanges = 0.0
    for ex in exchanges:
        handler = max(float(ex.critical.get(TOTAL, 0.0)), 0.0)
        handler = min(handler, ex.wall)  # a reply cannot take longer than its exchange
        named = 0.0
        for p in HOSPITAL_PHASES:
            part = float(ex.critical.get(p, 0.0))
            out[p] += part
            named += part
        out["other"] += handler - named
        out["send_receive"] += ex.wall - handler
        in_exchanges += ex.wall
    out["aggregate"] = float(aggregate)
    out["send_receive"] -= float(aggregate)
    out["evaluate"] += float(server_evaluate)
    out["other"] += seconds - in_exchanges - float(server_evaluate)
    return {f"phase_{p}": v for p, v in out.items()}


def run_phases(query_seconds: float, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The server's part of summary.json ``timing``: the size query, the rounds, and their phases summed."""
    phases = {p: sum(float(r.get(c) or 0.0) for r in rows) for p, c in zip(PHASES, PHASE_COLUMNS, strict=True)}
    return {"query": query_seconds, "rounds": sum(float(r.get("seconds") or 0.0) for r in rows), "phases": phases}


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
