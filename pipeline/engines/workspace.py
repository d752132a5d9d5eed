"""Private folders of a run, kept outside its run folder: the simulated hospitals' files, a deployment's workspace.

Each private folder records its run in ``owner.json`` (:func:`write_owner`): the run folder's path
and when the private folder was made, since its name (:func:`private_folder`) cannot be turned
back into the run folder. ``scripts/cleanup.py`` reads it to find private folders of abandoned
runs. A run locks its private folder with :func:`private_lock`: the lock file lies beside the
folder (``<hospital_dir>/.<name>.lock``), so deleting and recreating the folder keeps it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.lock import FolderLock

OWNER_FILE = "owner.json"


def private_folder(hospital_dir: str | Path, run_dir: Path, prefix: str = "") -> Path:
    """``<hospital_dir>/<prefix><run folder name>-<digest of its full path>``: one folder per run folder.

    The digest tells apart run folders of the same name (``outputs/<date>/<time>`` of two dates).
    """
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(str(hospital_dir)).expanduser() / f"{prefix}{Path(run_dir).name}-{digest}"


def private_lock(folder: str | Path) -> FolderLock:
    """The lock a run holds on its private folder: its file beside the folder, so ``rmtree`` keeps it."""
    return FolderLock.beside(folder)


def write_owner(folder: str | Path, run_dir: Path) -> Path:
    """Create ``folder`` (0700) with its ``owner.json`` (run folder, creation time) unless it has one."""
    path = Path(folder) / OWNER_FILE
    if path.exists():  # a resumed run keeps the first record
        return path
    record = {"run_dir": str(Path(run_dir).resolve()), "created": datetime.now(timezone.utc).isoformat()}
    return write_atomic(path, json.dumps(record, indent=2) + "\n", private=True)


def read_owner(folder: str | Path) -> dict | None:
    """``owner.json`` of ``folder`` (``run_dir``, ``created``); None when it is missing or unreadable."""
    try:
        record = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_dir"), str) else None
