"""The process-wide "stop requested" flag: set by the run's SIGINT/SIGTERM handler.

The simulation's server runs in a thread of the same process. When the run is interrupted,
Flower stops the hospitals and the round in flight fails; the server then must not present that
failure as the run's result (a ``stopped_early`` summary): it checks :func:`requested` before
writing anything, and the run's last checkpoint stays what it was.
"""

from __future__ import annotations

import threading

_REQUESTED = threading.Event()
_SIGNAL: list[int] = []


def request(signum: int) -> None:
    """Record that signal ``signum`` asked the run to stop (the first one counts)."""
    if not _SIGNAL:
        _SIGNAL.append(signum)
    _REQUESTED.set()


def requested() -> bool:
    """Whether the run was asked to stop."""
    return _REQUESTED.is_set()


def signal_number() -> int | None:
    """The signal that asked the run to stop first, or None."""
    return _SIGNAL[0] if _SIGNAL else None
