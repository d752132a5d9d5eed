"""Shared test helpers: the repository paths, the real data folder and Hydra config composition.

``compose_cfg`` is a plain function (``from conftest import compose_cfg``) and also a fixture of the
same name, so a test can use either form.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from pipeline.config import compose
from pipeline.privacy.plan import CACHE_ENV

# The noise search's file cache (pipeline.privacy.plan): one per test session, shared by the runs it
# starts, never the user's own.
os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="fedmed-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# The real data sets live next to the repository (../shared/data); always present in CI.
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def compose_raw(*overrides: str) -> DictConfig:
    """The Hydra composition of ``conf/config.yaml`` with ``overrides``, not validated.

    Hydra's own errors (unknown key, unknown group option) surface here.
    """
    return compose(*overrides, validated=False)


def compose_cfg(*overrides: str, validated: bool = True) -> DictConfig:
    """Compose the experiment config with ``overrides`` and (by default) run ``pipeline.config.validate``.

    ``run_dir`` is null in the composed config unless an override sets it.
    """
    return compose(*overrides, validated=validated)


@pytest.fixture(name="compose_cfg")
def _compose_cfg_fixture():
    """The :func:`compose_cfg` function, for tests that prefer a fixture to an import."""
    return compose_cfg


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding the real MedMNIST files (pneumoniamnist.npz)."""
    return DATA_ROOT


# The shrunk default experiment (DP-SGD + CKKS, 3 hospitals) of the end-to-end tests.
SMALL = [f"data.root={DATA_ROOT}", "data.limit=900", "federation.rounds=2", "train.local_epochs=1"]


def run_pipeline(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m pipeline.run run_dir=<run_dir> <overrides>``, the user's command, in a subprocess."""
    cmd = [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


CONSOLE = "console.txt"


@pytest.fixture(scope="session")
def private_run(tmp_path_factory) -> Path:
    """The product's default pipeline (DP-SGD + CKKS) simulated, shrunk to :data:`SMALL`; what the
    command printed (stdout, then stderr) is in ``<run folder>/../console.txt`` (:data:`CONSOLE`)."""
    run_dir = tmp_path_factory.mktemp("dp_ckks") / "run"
    private = tmp_path_factory.mktemp("hospitals")
    done = run_pipeline(run_dir, *SMALL, f"federation.hospital_dir={private}")
    (run_dir.parent / CONSOLE).write_text(done.stdout + done.stderr)
    return run_dir


@pytest.fixture(scope="session")
def twin_runs(tmp_path_factory) -> Path:
    """Two 1-round runs of :data:`SMALL` without DP, CKKS-encrypted (``ckks/``) and plaintext (``plain/``).

    Same seed, data and model: the twins of the encryption test and the two runs the comparison
    tests compare (they differ in ``encryption.enabled`` only).
    """
    parent = tmp_path_factory.mktemp("twins")
    common = [*SMALL, "federation.rounds=1", "privacy=none", f"federation.hospital_dir={parent / 'hospitals'}"]
    run_pipeline(parent / "ckks", *common, "encryption=ckks")
    run_pipeline(parent / "plain", *common, "encryption=none")
    return parent


# The quick synthetic run of the reliability tests, and the explicit, not-private mode in which a
# run's DP batches and noise follow its config (what bit-equality between two runs needs).
QUICK = ["data=synthetic", "data.num_samples=300", "train.batch_size=32", "federation.rounds=2", "train.local_epochs=1"]
REPRODUCIBLE = ["privacy.reproducible=true", "privacy.secure_mode=false"]


@pytest.fixture(scope="session")
def reproducible_run(tmp_path_factory) -> Path:
    """:data:`QUICK` with 3 rounds in the :data:`REPRODUCIBLE` mode, uninterrupted: the model and epsilons
    that a paused, killed or resumed run of the same config must end with."""
    run_dir = tmp_path_factory.mktemp("reproducible")
    private = tmp_path_factory.mktemp("reproducible_hospitals")
    run_pipeline(run_dir, *QUICK, "federation.rounds=3", *REPRODUCIBLE, f"federation.hospital_dir={private}")
    return run_dir


def privacy_cfg(**kw):
    """A complete ``privacy`` group (DP on, the default ``bk`` clipping) with ``kw`` overriding its values."""
    base = dict(
        enabled=True,
        epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        secure_mode=False,
        grad_sample_mode="bk",
        batchnorm="refuse",
    )
    base.update(kw)
    return OmegaConf.create(base)


# --- inference tests: run folders ----------------------------------------------------------------
# A small he_cnn: one filter, 4 hidden units (cheap to evaluate under CKKS in the tests).
TINY = ["model.conv_channels=1", "model.hidden=4"]


def make_run(run_dir: Path, *overrides: str, train_epochs: int = 0) -> Path:
    """A run folder for the inference tests (default: model=he_cnn on PneumoniaMNIST): config.yaml and
    model.pt, as a finished run leaves them; the weights are the seeded ones or, with ``train_epochs``,
    briefly trained in the clear on real images so that the logits have a trained model's size."""
    import numpy as np
    import torch

    from pipeline.reporting.recorder import CONFIG_FILE, MODEL_FILE
    from pipeline.task.data import ImageDataset, load_splits
    from pipeline.task.model import build_model, save_model

    cfg = compose_cfg("model=he_cnn", f"data.root={DATA_ROOT}", f"run_dir={run_dir}", *overrides)
    model = build_model(cfg, 1, 2, 28)
    if train_epochs:
        s = load_splits(cfg.data, int(cfg.seed))
        keep = np.random.default_rng(0).permutation(len(s.train_y))[:1000]
        data = ImageDataset(s.train_x[keep], s.train_y[keep], float(cfg.data.mean), float(cfg.data.std))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(train_epochs):
            for i in range(0, len(data), 100):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(data.x[i : i + 100]), data.y[i : i + 100]).backward()
                opt.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    save_model(model.eval(), run_dir / MODEL_FILE)
    return run_dir
