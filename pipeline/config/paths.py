"""Which config keys are file-system locations, and the resolvers the YAML files use.

A path says where a run reads or writes, never what it computes, so the folder names of a
multirun (Hydra's ``override_dirname``) and the comparison of runs leave these keys out. This is
the only list of them: ``conf/config.yaml`` reads it through the ``fedmed_path_keys`` resolver and
:mod:`pipeline.analysis.compare` through :func:`is_path_key`. ``fedmed_run_folder`` makes the
default run folder unique (:mod:`pipeline.config.run_folder`).
"""

from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf

from pipeline.config.run_folder import run_folder
from pipeline.config.schema import PathsConfig

# Keys (or whole subtrees) holding locations; ``paths.*`` is the conf/paths/ group.
PATH_KEYS = (
    "paths",
    "run_dir",
    "resume",
    "data.root",
    "data.test_root",
    "data.manifest",
    "data.test_manifest",
    "data.cache_dir",
    "model.checkpoint",
    "federation.hospital_dir",
    "privacy.lifetime_dir",
    "deployment.workspace",
    "hydra.run.dir",
    "hydra.sweep.dir",
)


def is_path_key(key: str) -> bool:
    """True for a dotted key that is, or lies under, one of :data:`PATH_KEYS`."""
    return any(key == k or key.startswith(k + ".") for k in PATH_KEYS)


def override_keys() -> list[str]:
    """Every path key as a command-line override would name it (Hydra matches names exactly)."""
    group = [f"paths.{f.name}" for f in fields(PathsConfig)]
    return group + [k for k in PATH_KEYS if k != "paths"]


def _first_set(first: object, second: object) -> object:
    return first if first not in (None, "") else second


OmegaConf.register_new_resolver("or", _first_set, replace=True)
OmegaConf.register_new_resolver("fedmed_path_keys", override_keys, replace=True)
# hydra.run.dir: resume, else run_dir, else a fresh outputs/<date>/<time>[-N] (pipeline/config/run_folder.py)
OmegaConf.register_new_resolver("fedmed_run_folder", run_folder, replace=True)
