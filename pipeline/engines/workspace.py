"""Private folders of a run, kept outside its run folder: the simulated hospitals' files, a deployment's workspace."""

from __future__ import annotations

import hashlib
from pathlib import Path


def private_folder(hospital_dir: str | Path, run_dir: Path, prefix: str = "") -> Path:
    """``<hospital_dir>/<prefix><run folder name>-<digest of its full path>``: one folder per run folder.

    The digest tells apart run folders of the same name (``outputs/<date>/<time>`` of two dates).
    """
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(str(hospital_dir)).expanduser() / f"{prefix}{Path(run_dir).name}-{digest}"
