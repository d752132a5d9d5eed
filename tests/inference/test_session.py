"""Encrypted inference across two processes: the command, the model owner's process, the report."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import tenseal as ts
from conftest import DATA_ROOT, TINY, compose_cfg, make_run
from omegaconf import OmegaConf

from pipeline.errors import ConfigError
from pipeline.inference.cli import main
from pipeline.inference.encrypted import CkksParams, pack
from pipeline.inference.session import RemoteModelOwner
from pipeline.reporting.recorder import CONFIG_FILE, MODEL_FILE
from pipeline.task.model import build_model, save_model


@pytest.fixture(scope="module")
def he_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("session_run"), *TINY, train_epochs=2)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """A finished run of the default MONAI cnn (GroupNorm, ReLU)."""
    folder = tmp_path_factory.mktemp("cnn_run")
    cfg = compose_cfg(f"data.root={DATA_ROOT}", f"run_dir={folder}")
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    save_model(build_model(cfg, 1, 2, 28), folder / MODEL_FILE)
    return folder


def test_encrypted_command_writes_marked_predictions_and_the_report(he_run, capsys):
    # Execute
    code = main([str(he_run), "--split", "test", "--limit", "2", "--encrypted"])

    # Assert
    out = he_run / "inference"
    report = json.loads((out / "report.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert code == 0
    assert len(rows) == 2 and all(r["encrypted"] == "true" for r in rows)
    assert report["images"] == 2 and report["layout"] == "im2col" and report["queries"] == 2
    assert report["agreement"] == 1.0 and report["max_logit_difference"] < 1e-2
    assert report["model_owner_has_secret_key"] is False
    assert 0 < report["bytes_per_query"]["up"] < 2**20 and 0 < report["bytes_per_query"]["down"] < 2**20
    assert report["evaluation_key_bytes"] > report["bytes_per_query"]["up"]  # Galois keys, sent once
    assert all(report["seconds_per_image"][k] > 0 for k in ("encrypt", "evaluate", "decrypt"))
    assert report["metrics_encrypted"]["accuracy"] == report["metrics_plaintext"]["accuracy"]
    assert "# Encrypted inference" in (out / "report.md").read_text()
    assert "Encrypted inference" in capsys.readouterr().out


def test_a_model_that_is_not_he_friendly_is_refused_by_the_model_owner(cnn_run, capsys):
    # Execute
    code = main([str(cnn_run), "--split", "test", "--limit", "1", "--encrypted"])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "GroupNorm" in err[0] and "ReLU" in err[0]
    assert not (cnn_run / "inference" / "report.json").exists()


def test_the_model_owner_process_publishes_its_spec_and_refuses_a_secret_key(he_run):
    # Prepare
    params = CkksParams()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
    ctx.global_scale = 2.0**params.scale_bits

    # Execute / Assert: the spec arrives before any key; a context with the secret key is refused
    with RemoteModelOwner(he_run) as remote:
        assert remote.spec.kernel_size == 7 and remote.spec.num_classes == 2 and remote.spec.conv_channels == 1
        with pytest.raises(ConfigError, match="secret key"):
            remote.send_context(pack({"ckks": asdict(params)}, [ctx.serialize(save_secret_key=True)]))
    assert remote.proc.returncode == 2
