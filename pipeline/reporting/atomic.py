"""Writing files so that a crash leaves either the old file or the new one, never half of one.

:func:`write_atomic` writes to a unique temporary name in the same folder, flushes it to disk,
renames it over the target and flushes the folder (``replace=False``: links it under the target's
name, which fails if that exists). ``private=True`` is the owner-only writer for
keys, certificates and hospital state: the folder is created 0700 and the file 0600 from the
start, so there is no moment at which anyone else could read it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def ensure_folder(folder: str | Path, private: bool = False) -> Path:
    """Create ``folder`` (and its parents) if needed; a new private folder is created 0700."""
    folder = Path(folder)
    if private:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=PRIVATE_FOLDER)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes, private: bool = False, replace: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (text is UTF-8); returns ``path``.

    Args:
        path: the file to write; its folder is created if needed.
        data: the whole new content.
        private: owner-only (0600 in a folder created 0700), for keys and hospital state.
        replace: False: never replace an existing ``path``; the complete file appears under its
            name by a hard link, which fails if the name exists (no check-then-create race).

    Raises:
        FileExistsError: ``replace=False`` and ``path`` exists.
    """
    path = Path(path)
    folder = ensure_folder(path.parent, private)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, 0o666 & ~_umask())
        if replace:
            os.replace(tmp, path)
        else:
            _create_from(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return path


def _create_from(tmp: str, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that exists (FileExistsError), then drop ``tmp``."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None  # named by the target
    except OSError:  # a file system without hard links: the check and the rename are two steps there
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_figure(fig, path: str | Path, **options) -> Path:
    """Render a matplotlib figure (format from the suffix) and write it with :func:`write_atomic`."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **options)
    return write_atomic(path, buf.getvalue())


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022
