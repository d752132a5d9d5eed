"""Packaging beyond what pyproject.toml can state: ``conf/`` ships inside the package as ``pipeline/conf``.

The Hydra configuration lives at the top of the checkout (``conf/``), where users edit it; an
installed wheel carries the same files as package data under ``pipeline/conf``, so that
``fedmed-run`` finds its config without the source tree (:func:`pipeline.config.conf_dir`).
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CONF = ROOT / "conf"
conf_packages = ["pipeline.conf"] + sorted(
    "pipeline.conf." + ".".join(d.relative_to(CONF).parts) for d in CONF.rglob("*") if d.is_dir()
)
setup(
    packages=find_packages(include=["pipeline", "pipeline.*", "strategies", "strategies.*", "models", "models.*"])
    + conf_packages,
    package_dir={"pipeline.conf": "conf"},
    package_data={name: ["*.yaml"] for name in conf_packages},
)
