"""Where a run came from: library versions, code commit, machine, seed and a fingerprint of its data.

``collect(cfg)`` returns a JSON-ready dict that run.py stores in summary.json under ``provenance``;
``pipeline.analysis.compare`` reads it back to warn when runs trained on different data or code. Every part
is best effort: a missing package, no git, or an unreadable data file gives ``None`` (or an
``error`` entry) instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Distribution names (as pip knows them) whose versions make a run reproducible.
PACKAGES = ("flwr", "torch", "opacus", "tenseal", "monai", "hydra-core", "numpy")
# Generator parameters of data.kind=synthetic (see pipeline.data.make_synthetic).
SYNTHETIC_PARAMS = ("num_samples", "num_classes", "image_size", "channels")
HASH_CHARS = 16
_CHUNK = 1 << 20


def collect(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Return the provenance of a run configured by ``cfg`` (a resolved, validated config).

    Keys: ``versions`` (python and each of :data:`PACKAGES`), ``git`` (``commit``, ``dirty``;
    ``None`` outside a git checkout), ``hostname``, ``platform``, ``cpu_count``, ``device`` (the
    torch device the run uses and its name), ``seed``, ``data`` (see :func:`data_fingerprint`)
    and ``collected_at`` (UTC, ISO 8601).
    """
    cfg = _as_config(cfg)
    return {
        "versions": versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device_name(str(cfg.get("device", "auto"))),
        "seed": cfg.get("seed"),
        "data": data_fingerprint(cfg.get("data") or OmegaConf.create({})),
        "collected_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _as_config(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)


def versions() -> dict[str, str | None]:
    """Python's version and the installed version of each of :data:`PACKAGES` (``None`` if absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(where: Path) -> dict[str, Any] | None:
    """The commit checked out in the git repository holding ``where`` and whether tracked files changed.

    ``None`` when git is not installed or ``where`` is not inside a repository (an installed wheel).
    Untracked files do not count as dirty (as ``git describe --dirty``).
    """
    commit = _git(["rev-parse", "HEAD"], where)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: str) -> dict[str, str]:
    """The torch device ``device`` (``auto``, ``cpu``, ``cuda:1`` ...) resolves to, and its hardware name."""
    import torch

    resolved = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    )
    name = _cpu_model()
    if resolved.type == "cuda" and torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(resolved.index if resolved.index is not None else 0)
        except (RuntimeError, AssertionError) as err:
            name = f"unavailable ({str(err).splitlines()[0]})"
    elif resolved.type == "cuda":
        name = "unavailable (CUDA not available)"
    return {"type": str(resolved), "name": name}


def _cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_CHARS]


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _folder_listing(root: Path) -> dict[str, Any]:
    """Sorted relative paths and sizes of the (non-hidden) files under ``root``, hashed."""
    if not root.is_dir():
        return {"root": str(root), "sha256": None, "error": "folder not found"}
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    entries.sort()
    listing = "\n".join(f"{rel}\t{size}" for rel, size in entries)
    return {
        "files": len(entries),
        "bytes": sum(size for _, size in entries),
        "sha256": _sha256_text(listing),
    }


def data_fingerprint(data: DictConfig) -> dict[str, Any]:
    """Identify the data ``data`` (the ``data`` config group) points to, without loading it.

    * ``medmnist``: sha256 of the .npz file (:func:`pipeline.data.medmnist_path`), its name and size;
    * ``folder``: sha256 of the sorted relative file list with sizes (root, and test_root if set);
    * ``synthetic``: the generator parameters and their sha256. The images also depend on the run's
      seed, recorded separately in the provenance (a seed sweep does not count as other data).

    Every kind has a ``sha256`` entry (first 16 hex digits), ``None`` when the data could not be
    read (``error`` then says why); ``data.limit`` is part of the config, not of the fingerprint.
    """
    kind = str(data.get("kind", ""))
    try:
        if kind == "medmnist":
            from pipeline.task.data import medmnist_path

            path = medmnist_path(data)
            if not path.is_file():
                return {"kind": kind, "file": path.name, "sha256": None, "error": "file not found"}
            return {"kind": kind, "file": path.name, "bytes": path.stat().st_size, "sha256": _sha256_file(path)}
        if kind == "folder":
            found: dict[str, Any] = {"kind": kind, **_folder_listing(Path(str(data.get("root"))).expanduser())}
            if data.get("test_root"):
                test = _folder_listing(Path(str(data.test_root)).expanduser())
                found["test"] = test
                found["sha256"] = (
                    _sha256_text(f"{found['sha256']}+{test['sha256']}") if found["sha256"] and test["sha256"] else None
                )
            return found
        if kind == "synthetic":
            params = {k: data.get(k) for k in SYNTHETIC_PARAMS}
            return {"kind": kind, "params": params, "sha256": _sha256_text(json.dumps(params, sort_keys=True))}
    except OSError as err:
        return {"kind": kind, "sha256": None, "error": f"{type(err).__name__}: {err}"}
    return {"kind": kind, "sha256": None, "error": f"unknown data.kind {kind!r}"}
