"""The default run folder ``outputs/<date>/<time>``, unique even for runs started in the same second.

``hydra.run.dir`` (conf/config.yaml) is ``${fedmed_run_folder:${resume},${run_dir},<default>}``:
:func:`run_folder` returns ``resume`` or ``run_dir`` when one is set, and otherwise claims the
default folder with :func:`claim_fresh_folder`: ``os.mkdir`` (which fails if the folder exists)
of ``<default>``, else ``<default>-2``, ``<default>-3``, ... so exactly one run gets each folder.

Why in the resolver and not in ``hydra_main``: Hydra resolves ``hydra.run.dir`` once, before the
job starts, and then writes ``.hydra/`` and opens ``run.log`` in that folder. By the time
``hydra_main`` runs, a second run of the same second would already have overwritten the first
run's ``.hydra/`` files and be appending to its ``run.log``; claiming the folder while the path
is resolved keeps the two runs apart from their first byte. The claim is remembered per process
(Hydra may resolve the value again), so one process always gets the same folder for one
default path.
"""

from __future__ import annotations

import threading
from pathlib import Path

_claimed: dict[str, str] = {}  # default path -> the folder this process claimed for it
_guard = threading.Lock()
MAX_SIBLINGS = 1000


def claim_fresh_folder(base: str | Path) -> Path:
    """Create and return ``base``, or the first of ``base-2``, ``base-3``, ... that does not exist yet.

    Raises:
        FileExistsError: ``base`` and its first :data:`MAX_SIBLINGS` siblings all exist.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_SIBLINGS + 1):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{base} and {MAX_SIBLINGS - 1} numbered siblings exist already; set run_dir=...")


def run_folder(resume: object, run_dir: object, default: object) -> str:
    """``resume``, else ``run_dir``, else a fresh folder claimed for ``default`` (once per process)."""
    for given in (resume, run_dir):
        if given not in (None, ""):
            return str(given)
    key = str(default)
    with _guard:
        if key not in _claimed:
            _claimed[key] = str(claim_fresh_folder(key))
        return _claimed[key]
