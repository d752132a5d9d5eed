"""End-to-end: real Flower simulations (Ray), real Opacus, real TenSEAL, on the real data.

Each run goes through the user's command (``python -m pipeline.run ...``) in a subprocess and is
checked by the content of what it writes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, SMALL, run_pipeline

pytestmark = pytest.mark.e2e

DATA = DATA_ROOT


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_private_run_writes_complete_outputs(private_run):
    rows = read_rows(private_run)
    summary = json.loads((private_run / "summary.json").read_text())

    assert [int(r["round"]) for r in rows] == [1, 2]
    for r in rows:
        assert int(r["hospitals"]) == 3
        assert float(r["train_loss"]) > 0
        assert 0.5 <= float(r["val_auc"]) <= 1.0
        assert float(r["bytes_up"]) > 0 and float(r["bytes_down"]) > 0
        assert float(r["seconds"]) > 0
    assert summary["status"] == "completed" and summary["encrypted"] is True
    assert summary["rounds_completed"] == 2 and summary["num_hospitals"] == 3
    for key in ("auc", "accuracy", "mcc", "loss"):
        assert summary["test"][key] is not None
    assert 0.6 < summary["test"]["auc"] <= 1.0
    assert (private_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (private_run / "config.yaml").exists()


def test_private_run_keeps_every_epsilon_within_target(private_run):
    summary = json.loads((private_run / "summary.json").read_text())
    rows = read_rows(private_run)

    assert len(summary["epsilon"]) == 3
    assert all(0 < eps <= summary["epsilon_target"] for eps in summary["epsilon"].values())
    assert float(rows[1]["epsilon_max"]) > float(rows[0]["epsilon_max"]) > 0  # cumulative, not per round


def test_private_run_meets_the_wire_size_target(private_run):
    summary = json.loads((private_run / "summary.json").read_text())

    assert summary["bytes_per_param_up"] <= 8.0
    assert summary["bytes_per_param_down"] <= 2 * 8.0  # one aggregate down per round (evaluate)


def test_private_run_saves_a_loadable_model_and_no_keys(private_run, tmp_path):
    from omegaconf import OmegaConf

    from pipeline.task.model import build_model

    cfg = OmegaConf.load(private_run / "config.yaml")
    model = build_model(cfg, 1, 2, 28)
    model.load_state_dict(torch.load(private_run / "model.pt"))
    private = Path(cfg.federation.hospital_dir)

    assert private.exists() and not any(private.rglob("*")), "the hospitals' key and state files go after the run"
    assert not list(private_run.rglob("*.ctx"))
    assert b"secret" not in (private_run / "summary.json").read_bytes()


def test_encrypted_and_plaintext_twins_agree(tmp_path):
    """Same seed, no DP noise: the CKKS run's model matches the plaintext run's within quantisation."""
    common = [*SMALL, "privacy=none", f"federation.hospital_dir={tmp_path / 'hospitals'}"]
    enc_dir, plain_dir = tmp_path / "ckks", tmp_path / "plain"
    run_pipeline(enc_dir, *common, "encryption=ckks")
    run_pipeline(plain_dir, *common, "encryption=none")
    enc = torch.load(enc_dir / "model.pt")
    plain = torch.load(plain_dir / "model.pt")
    s_enc = json.loads((enc_dir / "summary.json").read_text())
    s_plain = json.loads((plain_dir / "summary.json").read_text())

    diffs = [float((enc[k] - plain[k]).abs().max()) for k in plain]
    scale = max(float(plain[k].abs().max()) for k in plain)
    assert max(diffs) < 0.02 * scale
    assert abs(s_enc["test"]["auc"] - s_plain["test"]["auc"]) < 0.01
    assert s_plain["bytes_per_param_up"] == pytest.approx(4.0, rel=0.01)  # float32 plaintext twin


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_baselines_write_comparable_outputs(tmp_path, mode):
    run_pipeline(tmp_path, *SMALL, f"federation.mode={mode}", "encryption=none")
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = read_rows(tmp_path)

    assert summary["mode"] == mode and len(rows) == 2
    assert 0.5 < summary["test"]["auc"] <= 1.0
    assert all(0 < e <= 8.0 for e in summary["epsilon"].values())
    if mode == "local":
        assert sorted(summary["test_per_hospital"]) == ["0", "1", "2"]
        assert np.isclose(summary["test"]["auc"], np.mean([m["auc"] for m in summary["test_per_hospital"].values()]))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["federation.num_hospitals=0"], "federation.num_hospitals=0"),
        (["model=vgg"], "model"),
        (["data.root=/nonexistent/folder"], "/nonexistent/folder/pneumoniamnist.npz not found"),
        (["privacy.epsilon=0"], "privacy.epsilon=0"),
        (["encryption.poly_modulus_degree=2048"], "128-bit security limit"),
    ],
)
def test_bad_input_stops_with_one_line(tmp_path, overrides, fragment):
    done = run_pipeline(tmp_path / "run", f"data.root={DATA}", *overrides, check=False)
    output = done.stdout + done.stderr

    assert done.returncode != 0
    assert fragment in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "summary.json").exists()


def test_one_class_folder_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "normal").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 40, np.uint8)).save(tmp_path / "imgs" / "normal" / f"{i}.png")

    done = run_pipeline(tmp_path / "run", "data=folder", f"data.root={tmp_path / 'imgs'}", check=False)

    assert done.returncode != 0
    assert "has 1 class sub-folder(s)" in done.stdout + done.stderr
