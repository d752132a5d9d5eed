"""Finding and removing the private folders of abandoned runs under ``federation.hospital_dir``.

    python scripts/cleanup.py [--hospital-dir DIR] [--older-than-days N] [--delete] [--include-unknown]

A simulation or a deployment keeps its private files (keys, privacy ledgers, model copies, a
deployment's workspace) in ``<hospital_dir>/<prefix><run folder name>-<digest>``, and deletes them
when the run completes; a paused, failed or interrupted run keeps them so that it can be resumed or
inspected. A private folder is **abandoned** when, according to its ``owner.json``
(:func:`pipeline.engines.workspace.write_owner`),

* its run folder no longer exists, or
* its run ended (summary.json status ``completed`` or ``stopped_early``) more than N days ago
  (summary.json's modification time: when the run ended),

and no live run holds its lock (:func:`pipeline.engines.workspace.private_lock`) or its run
folder's. A folder without a readable ``owner.json`` (made before owner records existed) has an
**unknown owner**: it is listed, and removed only with ``--include-unknown``. Only folders that
have an ``owner.json`` or a private folder's name (``...-<12 hex digits>``) are looked at, so other
folders kept there (e.g. a ``privacy.lifetime_dir``) are never touched. Without ``--delete``
nothing is removed; a folder is removed while holding its lock, so a run that starts meanwhile
keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.engines.workspace import private_lock, read_owner
from pipeline.errors import RunFailed
from pipeline.reporting.lock import LOCK_NAME, FolderLock, live_holder
from pipeline.reporting.recorder import SUMMARY_FILE

ENDED = ("completed", "stopped_early")
DEFAULT_DAYS = 7.0
_PRIVATE_NAME = re.compile(r".+-[0-9a-f]{12}$")
DAY = 86400.0


@dataclass(frozen=True)
class Decision:
    """What cleanup makes of one private folder."""

    folder: Path
    abandoned: bool
    reason: str
    unknown_owner: bool = False

    def removable(self, include_unknown: bool) -> bool:
        """Whether ``--delete`` removes it (unknown owners only with ``include_unknown``)."""
        return self.abandoned and (include_unknown or not self.unknown_owner)


def private_folders(hospital_dir: str | Path) -> list[Path]:
    """The folders directly under ``hospital_dir`` that are runs' private folders, sorted; [] if it is missing."""
    root = Path(hospital_dir).expanduser()
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue
        if read_owner(entry) is not None or _PRIVATE_NAME.match(entry.name):
            found.append(entry)
    return found


def holder_of(folder: Path, run_dir: Path | None) -> str | None:
    """Who holds ``folder`` (its lock beside it or inside it, or its run folder's lock); None if nobody live."""
    locks = [private_lock(folder).lock_file, folder / LOCK_NAME]
    if run_dir is not None:
        locks.append(FolderLock(run_dir).lock_file)
    for lock_file in locks:
        holder = live_holder(lock_file)
        if holder is not None:
            return holder.describe()
    return None


def _run_status(run_dir: Path) -> tuple[str | None, float | None]:
    """The run's summary.json status and modification time; (None, None) without a readable summary."""
    path = run_dir / SUMMARY_FILE
    try:
        status = json.loads(path.read_text()).get("status")
        return (str(status) if status is not None else None), path.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        return None, None


def decide(folder: str | Path, older_than_days: float = DEFAULT_DAYS, now: float | None = None) -> Decision:
    """Whether ``folder`` belongs to an abandoned run, and why (see the module's description)."""
    folder = Path(folder)
    now = time.time() if now is None else now
    owner = read_owner(folder)
    run_dir = Path(owner["run_dir"]) if owner is not None else None
    holder = holder_of(folder, run_dir)
    if holder is not None:
        return Decision(folder, False, f"in use by a live run ({holder})")
    if run_dir is None:
        return Decision(folder, True, "unknown owner (no owner.json)", unknown_owner=True)
    if not run_dir.exists():
        return Decision(folder, True, f"its run folder {run_dir} no longer exists")
    status, ended = _run_status(run_dir)
    if status not in ENDED or ended is None:
        return Decision(folder, False, f"its run {run_dir} is {status or 'not finished'} (resumable or to inspect)")
    days = (now - ended) / DAY
    if days <= older_than_days:
        return Decision(
            folder, False, f"its run {run_dir} ended {status} {days:.1f} days ago (not older than {older_than_days:g})"
        )
    return Decision(folder, True, f"its run {run_dir} ended {status} {days:.1f} days ago")


def abandoned(
    hospital_dir: str | Path, older_than_days: float = DEFAULT_DAYS, now: float | None = None
) -> list[Decision]:
    """The decisions on every private folder under ``hospital_dir`` that is abandoned."""
    decisions = (decide(f, older_than_days, now) for f in private_folders(hospital_dir))
    return [d for d in decisions if d.abandoned]


def folder_size(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def human_size(size: int) -> str:
    """``1.5 MiB``-style size."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover (the loop returns)


def remove(folder: str | Path) -> None:
    """Delete ``folder`` while holding its lock.

    Raises:
        RunFailed: a live run holds it (it is kept).
    """
    folder = Path(folder)
    with private_lock(folder):
        holder = live_holder(folder / LOCK_NAME)
        if holder is not None:
            raise RunFailed(f"{folder} is in use by another run ({holder.describe()}); it is kept")
        shutil.rmtree(folder)


def default_hospital_dir() -> Path:
    """``federation.hospital_dir`` of the default config (``paths.hospitals``)."""
    from pipeline.config import compose

    return Path(str(compose(validated=False).federation.hospital_dir)).expanduser()


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/cleanup.py ...``: list (``--delete``: remove) abandoned private folders; the exit status."""
    parser = argparse.ArgumentParser(description="List or remove the private folders of abandoned runs.")
    parser.add_argument(
        "--hospital-dir", default=None, help="where the private folders lie (default: federation.hospital_dir)"
    )
    parser.add_argument(
        "--older-than-days",
        type=float,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"a completed run's private folder is abandoned N days after the run ended (default {DEFAULT_DAYS:g})",
    )
    parser.add_argument("--delete", action="store_true", help="remove them (without it, only list)")
    parser.add_argument(
        "--include-unknown", action="store_true", help="with --delete, also remove folders without owner.json"
    )
    args = parser.parse_args(argv)
    if not args.older_than_days >= 0:
        print(f"error: --older-than-days {args.older_than_days:g}: give a number of days >= 0", file=sys.stderr)
        return 2
    root = Path(args.hospital_dir).expanduser() if args.hospital_dir else default_hospital_dir()
    found = abandoned(root, args.older_than_days)
    if not found:
        print(f"no abandoned private folders in {root}")
        return 0
    for decision in found:
        size = human_size(folder_size(decision.folder))
        if not args.delete:
            print(f"{decision.folder}  {size}  {decision.reason}")
        elif not decision.removable(args.include_unknown):
            print(f"kept {decision.folder}  {size}  {decision.reason}; --include-unknown removes it")
        else:
            try:
                remove(decision.folder)
            except (RunFailed, OSError) as err:
                print(f"kept {decision.folder}: {err}")
                continue
            print(f"removed {decision.folder}  {size}  {decision.reason}")
    if not args.delete:
        print(f"{len(found)} abandoned; nothing removed (--delete removes them)")
    return 0
