"""End-to-end: real Flower simulations (Ray), real Opacus, real TenSEAL, on the real data.

Each run goes through the user's command (``python -m pipeline.run ...``) in a subprocess and is
checked by the values of what it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import torch
from conftest import DATA_ROOT, SMALL, compose_cfg, run_pipeline
from omegaconf import OmegaConf

from pipeline.errors import ConfigError, DataError
from pipeline.reporting.recorder import read_metrics
from pipeline.task import sites
from pipeline.task.model import build_model, get_flat
from pipeline.task.training import evaluate

pytestmark = pytest.mark.e2e


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _model(run_dir: Path):
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = build_model(cfg, 1, 2, 28)
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    return cfg, model


def test_private_run_writes_complete_outputs(private_run):
    rows = read_metrics(private_run / "metrics.csv")
    summary = _summary(private_run)

    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["hospitals"] == 3 and r["dropped"] == 0
        assert r["train_loss"] > 0 and 0.5 <= r["val_auc"] <= 1.0
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["seconds"] > 0
    assert summary["status"] == "completed" and summary["encrypted"] is True
    assert summary["rounds_completed"] == 2 and summary["num_hospitals"] == 3
    assert summary["final_validation"]["val_auc"] == pytest.approx(rows[-1]["val_auc"], rel=1e-5)
    assert (private_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reported_test_metrics_are_those_of_the_saved_model(private_run):
    # Prepare
    cfg, model = _model(private_run)
    summary = _summary(private_run)

    # Execute: evaluate model.pt on the test split ourselves
    metrics = evaluate(model, sites.test_dataset(cfg), torch.device("cpu"))

    # Assert: the consortium tested this very model, and it learned something
    assert summary["test_evaluated_by"].startswith("consortium")
    for key in ("auc", "accuracy", "mcc", "loss"):
        assert summary["test"][key] == pytest.approx(metrics[key], rel=1e-6)
    assert summary["test"]["auc"] > 0.75
    initial = get_flat(build_model(cfg, 1, 2, 28))
    assert np.abs(get_flat(model) - initial).max() > 1e-3, "the final model is not the initial one"
    # the clinical numbers: at the hospitals' validation threshold of the last round, over the whole test split
    test, last = summary["test"], read_metrics(private_run / "metrics.csv")[-1]
    low, high = test["auc_ci"]
    assert low < test["auc"] < high
    assert 0 < test["threshold"] < 1 and test["threshold"] == pytest.approx(last["val_threshold"], rel=1e-5)
    assert "validation data" in test["threshold_source"] and "round 2" in test["threshold_source"]
    assert sum(test["confusion"].values()) == len(sites.test_dataset(cfg)) == 624
    assert all(0 <= test[k] <= 1 for k in ("sensitivity", "specificity", "ppv", "npv", "f1", "ece"))
    assert (private_run / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_private_run_keeps_every_epsilon_within_target(private_run):
    summary = _summary(private_run)
    rows = read_metrics(private_run / "metrics.csv")

    assert sorted(summary["epsilon"]) == ["0", "1", "2"]
    assert all(0 < eps <= summary["epsilon_target"] for eps in summary["epsilon"].values())
    assert rows[1]["epsilon_max"] > rows[0]["epsilon_max"] > 0  # cumulative, not per round
    assert max(summary["epsilon"].values()) == pytest.approx(rows[-1]["epsilon_max"], rel=1e-5)


def test_privacy_report_lets_anyone_recompute_every_epsilon(private_run):
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from opacus.accountants import create_accountant

    report = json.loads((private_run / "privacy.json").read_text())
    summary = _summary(private_run)

    assert sorted(report["hospitals"]) == ["0", "1", "2"] and report["randomness"] == ["secure"]
    assert summary["private"] is True and summary["randomness"] == ["secure"]
    for hospital, entry in report["hospitals"].items():
        assert entry["rounds_trained"] == 2 and [r["round"] for r in entry["epsilon_per_round"]] == [1, 2]
        assert entry["randomness"] == "secure" and entry["max_grad_norm"] == 0.25
        # the same accountant, fed the reported history, gives the reported epsilon
        acc = create_accountant(entry["accountant"])
        acc.history = [tuple(h) for h in entry["history"]]
        assert acc.get_epsilon(delta=entry["delta"]) == pytest.approx(summary["epsilon"][hospital], rel=1e-6)
        # an independent accountant (Google's privacy-loss distributions) from the plan alone agrees
        steps = sum(h[2] for h in entry["history"])
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
        gaussian = dp_event.GaussianDpEvent(entry["noise_multiplier"])
        pld.compose(dp_event.PoissonSampledDpEvent(entry["sample_rate"], gaussian), steps)
        assert pld.get_epsilon(entry["delta"]) == pytest.approx(summary["epsilon"][hospital], rel=0.03)
        assert entry["lifetime_epsilon"] == pytest.approx(summary["epsilon"][hospital], rel=1e-6)


def test_private_run_meets_the_wire_size_target(private_run):
    summary = _summary(private_run)

    assert 6.0 < summary["bytes_per_param_up"] <= 8.0
    assert 6.0 < summary["bytes_per_param_down"] <= 2 * 8.0  # one aggregate down per round (evaluate)


def test_private_run_leaves_no_key_behind(private_run):
    cfg = OmegaConf.load(private_run / "config.yaml")
    private = Path(cfg.federation.hospital_dir)

    assert private.exists() and not any(private.rglob("*")), "the hospitals' key and state files go after the run"
    for path in private_run.rglob("*"):  # no file in the run folder loads as a key-holding context
        if path.is_file():
            try:
                ctx = ts.context_from(path.read_bytes())
            except Exception:  # not a TenSEAL context: fine
                continue
            assert not ctx.has_secret_key(), f"{path} holds a secret key"
    assert "hospitals_secret" not in (private_run / "summary.json").read_text()
    assert "hospitals_secret" not in (private_run / "config.yaml").read_text()


def test_encrypted_and_plaintext_twins_agree(twin_runs):
    """Same seed, no DP noise, one round: the CKKS model equals the plaintext one within quantisation."""
    enc_dir, plain_dir = twin_runs / "ckks", twin_runs / "plain"
    cfg, enc = _model(enc_dir)
    _, plain = _model(plain_dir)
    s_enc, s_plain = _summary(enc_dir), _summary(plain_dir)

    # one quantisation step of the sum, over the total weight (about 3): a few steps of tolerance
    e = cfg.encryption
    step = 2 * e.clip / ((1 << (e.field_bits - 2)) - 1)  # 3 hospitals: 2 bits of headroom
    initial = get_flat(build_model(cfg, 1, 2, 28))
    moved = np.abs(get_flat(plain) - initial).max()
    difference = np.abs(get_flat(enc) - get_flat(plain)).max()
    assert difference < 2 * step
    assert moved > 5 * difference, "the round moved the weights far more than the twins differ"
    assert abs(s_enc["test"]["auc"] - s_plain["test"]["auc"]) < 0.005
    assert s_plain["bytes_per_param_up"] == pytest.approx(4.0, rel=0.01)  # float32 plaintext twin
    assert s_enc["bytes_per_param_up"] < 8.0


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_baselines_write_comparable_outputs(tmp_path, mode):
    run_pipeline(tmp_path, *SMALL, f"federation.mode={mode}", "encryption=none")
    summary = _summary(tmp_path)
    rows = read_metrics(tmp_path / "metrics.csv")

    assert summary["mode"] == mode and len(rows) == 2
    assert 0.6 < summary["test"]["auc"] <= 1.0
    expected = ["pooled"] if mode == "centralized" else ["0", "1", "2"]
    assert sorted(summary["epsilon"]) == expected and all(0 < e <= 8.0 for e in summary["epsilon"].values())
    if mode == "local":
        assert sorted(summary["test_per_hospital"]) == ["0", "1", "2"]
        assert np.isclose(summary["test"]["auc"], np.mean([m["auc"] for m in summary["test_per_hospital"].values()]))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model=vgg"], "model"),
        (["privacy.epsilon=0"], "privacy.epsilon=0"),
    ],
)
def test_bad_input_stops_the_command_with_one_line(tmp_path, overrides, fragment):
    done = run_pipeline(tmp_path / "run", f"data.root={DATA_ROOT}", *overrides, check=False)
    output = done.stdout + done.stderr

    assert done.returncode != 0
    assert fragment in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "overrides, error, fragment",
    [
        (["federation.num_hospitals=0"], ConfigError, "federation.num_hospitals=0"),
        (["data.root=/nonexistent/folder"], DataError, "/nonexistent/folder/pneumoniamnist.npz not found"),
        (["encryption.poly_modulus_degree=2048"], ConfigError, "128-bit security limit"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(tmp_path, overrides, error, fragment):
    from pipeline.run import execute

    cfg = compose_cfg(f"data.root={DATA_ROOT}", *overrides, validated=False)

    with pytest.raises(error, match=fragment.replace(".", r"\.")):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_one_class_folder_is_refused(tmp_path):
    from PIL import Image

    from pipeline.run import execute

    (tmp_path / "imgs" / "normal").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 40, np.uint8)).save(tmp_path / "imgs" / "normal" / f"{i}.png")
    cfg = compose_cfg("data=folder", f"data.root={tmp_path / 'imgs'}", validated=False)

    with pytest.raises(DataError, match=r"has 1 class sub-folder\(s\)"):
        execute(cfg, tmp_path / "run")
