"""An exclusive lock on a folder, so that two runs never write into the same run or private folder.

:class:`FolderLock` creates a lock file with ``os.open(O_CREAT | O_EXCL)`` (0600): the operating
system lets exactly one process create it. The file holds JSON naming its holder: ``pid``,
``host``, ``started`` (ISO UTC), ``process_start`` (field 22 of ``/proc/<pid>/stat``, the
process's start time in clock ticks since boot, where ``/proc`` exists) and ``command`` (the
command line as typed, ``sys.orig_argv``).

An existing lock file is **live** when it names this host and a running process whose start
time (if recorded) matches ``/proc``'s (a reused pid is not the holder): acquiring then raises
:class:`~pipeline.errors.RunFailed` with one line naming the holder. A lock naming another host
cannot be checked from here and counts as live too (its message names the file to delete if that
run is gone). Otherwise the lock is **stale** (its process died, or the file is unreadable and
older than :data:`HALF_WRITTEN_SECONDS`): it is removed with a warning and acquisition is tried
once more.

Within one process the lock is re-entrant: a module-level registry counts how often each lock
file is held, and only the last :meth:`FolderLock.release` removes the file (and only while it
still names this process). An ``atexit`` hook releases what is still held; :func:`release_all`
does the same before an ``os._exit``.

Where the lock file lies: ``<folder>/.fedmed.lock`` (:data:`LOCK_NAME`, hidden, so nothing that
lists a run's files takes it for a result), or with :meth:`FolderLock.beside` the file
``<parent>/.<name>.lock`` next to the folder, for folders that are deleted and recreated while
locked (a private folder's ``rmtree`` must not remove its own lock).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import RunFailed

log = logging.getLogger("fedmed")

LOCK_NAME = ".fedmed.lock"
# An unreadable (half-written) lock file younger than this is being written right now: wait for it.
HALF_WRITTEN_SECONDS = 5.0
_COMMAND_CHARS = 300  # the holder's command as the refusal quotes it, at most

_registry_guard = threading.Lock()
# lock file -> (pid that holds it, how many acquisitions are outstanding); pid tells a fork apart
_held: dict[Path, tuple[int, int]] = {}


@dataclass(frozen=True)
class Holder:
    """Who a lock file names (any field may be missing from an older or foreign file)."""

    pid: int
    host: str
    started: str
    process_start: int | None
    command: str

    def is_live(self) -> bool:
        """True for a running process on this host (same start time, if recorded), or any holder elsewhere."""
        if self.host != socket.gethostname():
            return True  # cannot be checked from here: never taken over
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, owned by someone else
        now = process_start_time(self.pid)
        return self.process_start is None or now is None or now == self.process_start

    def describe(self) -> str:
        """``pid 1234 on host h, started 2026-12-01T22:00:00Z: python -m pipeline.run ...``."""
        if self.pid <= 0:
            return f"a process on host {self.host} is taking the lock right now"
        command = " ".join(self.command.split())
        if len(command) > _COMMAND_CHARS:
            command = command[: _COMMAND_CHARS - 3] + "..."
        started = f", started {self.started}" if self.started else ""
        return f"pid {self.pid} on host {self.host}{started}: {command or '(command unknown)'}"


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks after boot); None without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # fields after the name start at field 3
    except (OSError, IndexError, ValueError):
        return None


def read_holder(lock_file: str | Path) -> Holder | None:
    """The holder a lock file names; None when it is missing, unreadable or not (yet) a lock record."""
    try:
        raw = json.loads(Path(lock_file).read_text())
        start = raw.get("process_start")
        return Holder(
            pid=int(raw["pid"]),
            host=str(raw.get("host", "")),
            started=str(raw.get("started", "")),
            process_start=None if start is None else int(start),
            command=str(raw.get("command", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def live_holder(lock_file: str | Path) -> Holder | None:
    """The live holder of ``lock_file`` (see :meth:`Holder.is_live`); None when it is free or stale.

    A lock file being written right now (unreadable, younger than :data:`HALF_WRITTEN_SECONDS`)
    counts as held, by a holder of unknown pid (``pid`` 0).
    """
    path = Path(lock_file)
    holder = read_holder(path)
    if holder is not None:
        return holder if holder.is_live() else None
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    return Holder(0, socket.gethostname(), "", None, "") if age < HALF_WRITTEN_SECONDS else None


def _record() -> bytes:
    pid = os.getpid()
    return json.dumps(
        {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "process_start": process_start_time(pid),
            # as typed (``python -m pipeline.run ...``); sys.argv would start with the module's file
            "command": " ".join(getattr(sys, "orig_argv", None) or sys.argv),
        }
    ).encode()


class FolderLock:
    """Exclusive use of ``folder`` by this process: ``with FolderLock(folder): ...`` or ``acquire()`` / ``release()``.

    Args:
        folder: the folder to lock (it need not exist yet for :meth:`beside`).
        lock_file: where the lock file lies; ``<folder>/.fedmed.lock`` by default.

    Raises (from :meth:`acquire`):
        RunFailed: another live run holds the lock; the one-line message names it.
    """

    def __init__(self, folder: str | Path, lock_file: str | Path | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.lock_file = Path(lock_file).expanduser().resolve() if lock_file is not None else self.folder / LOCK_NAME
        self._count = 0

    @classmethod
    def beside(cls, folder: str | Path) -> FolderLock:
        """A lock on ``folder`` whose file ``<parent>/.<name>.lock`` survives deleting the folder itself."""
        folder = Path(folder).expanduser().resolve()
        return cls(folder, folder.parent / f".{folder.name}.lock")

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._count > 0

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> FolderLock:
        """Take the lock (again, if this process holds it already); returns ``self``."""
        with _registry_guard:
            pid, count = _held.get(self.lock_file, (os.getpid(), 0))
            if pid != os.getpid():  # inherited through fork: the parent holds it, not this process
                count = 0
            if count == 0:
                self._create()
            _held[self.lock_file] = (os.getpid(), count + 1)
            self._count += 1
        return self

    def release(self) -> None:
        """Give up one acquisition; the last one removes the lock file if it still names this process."""
        with _registry_guard:
            if self._count == 0:
                return
            self._count -= 1
            pid, count = _held.get(self.lock_file, (os.getpid(), 1))
            if pid != os.getpid() or count <= 1:
                _held.pop(self.lock_file, None)
                if pid == os.getpid():
                    _remove_if_ours(self.lock_file)
            else:
                _held[self.lock_file] = (pid, count - 1)

    def _create(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if attempt == 2 or not self._remove_stale():
                    raise self._in_use() from None
                continue
            try:
                os.write(fd, _record())
                os.fsync(fd)
            finally:
                os.close(fd)
            return

    def _holder_when_written(self) -> tuple[bytes | None, Holder | None]:
        """The lock file's bytes and holder, waiting while a young file is still unreadable."""
        deadline = time.monotonic() + HALF_WRITTEN_SECONDS
        while True:
            try:
                raw = self.lock_file.read_bytes()
            except FileNotFoundError:
                return None, None
            holder = read_holder(self.lock_file)
            if holder is not None or live_holder(self.lock_file) is None or time.monotonic() > deadline:
                return raw, holder
            time.sleep(0.1)

    def _remove_stale(self) -> bool:
        """Remove a stale lock file (True, also when it is gone already); False when its holder is live."""
        raw, holder = self._holder_when_written()
        if raw is None:
            return True
        if holder is not None and holder.is_live():
            return False
        if holder is None and live_holder(self.lock_file) is not None:
            return False
        with contextlib.suppress(FileNotFoundError):
            if self.lock_file.read_bytes() != raw:  # replaced meanwhile by a run that took it over
                return False
            self.lock_file.unlink()
        if holder is None:
            who = "unreadable lock file"
        elif process_start_time(holder.pid) is None:
            who = f"pid {holder.pid} is no longer running"
        else:
            who = f"pid {holder.pid} is no longer running; that pid now belongs to another process"
        log.warning("%s: removed a stale lock (%s): %s", self.folder, who, self.lock_file)
        return True

    def _in_use(self) -> RunFailed:
        holder = read_holder(self.lock_file) or live_holder(self.lock_file)
        who = holder.describe() if holder is not None else "holder unknown"
        hint = "wait for it to finish or stop it, or choose another folder"
        if holder is not None and holder.host != socket.gethostname():
            hint += f" (if that run is gone, delete {self.lock_file})"
        return RunFailed(f"{self.folder} is in use by another run ({who}); {hint}")


def refuse_if_locked(folder: str | Path) -> None:
    """Raise the refusal of :meth:`FolderLock.acquire` when a live run holds ``<folder>/.fedmed.lock``.

    A check without taking the lock (the lock itself decides; this only answers early).
    """
    lock = FolderLock(folder)
    if live_holder(lock.lock_file) is not None:
        raise lock._in_use()


def _remove_if_ours(lock_file: Path) -> None:
    holder = read_holder(lock_file)
    if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()


def release_all() -> None:
    """Remove every lock file this process still holds (``atexit``; also before an ``os._exit``)."""
    with _registry_guard:
        for lock_file, (pid, _) in list(_held.items()):
            if pid == os.getpid():
                _remove_if_ours(lock_file)
                del _held[lock_file]


atexit.register(release_all)
