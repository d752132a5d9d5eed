"""End-to-end on data as hospitals export it: NIfTI volumes (3D), a DICOM manifest with a warm start, multi-label.

Each run is the default private pipeline (DP-SGD + CKKS, 3 hospitals) through the user's command,
shrunk to 2 rounds of 1 epoch on small generated images whose label is visible in the pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_cfg, run_pipeline
from omegaconf import OmegaConf

from pipeline.analysis.compare.metrics import run_metrics
from pipeline.analysis.compare.runs import load_run
from pipeline.task.generated import dicom_export, multi_label_export, nifti_export
from pipeline.task.model import build_model, save_model

pytestmark = pytest.mark.e2e

QUICK = ["federation.rounds=2", "train.local_epochs=1", "train.batch_size=16"]


def _manifest(path: Path, *extra: str) -> list[str]:
    return [
        "data=manifest",
        f"data.manifest={path}",
        "data.image_column=file",
        "data.label_column=finding",
        f"data.cache_dir={path.parent / 'cache'}",
        *QUICK,
        *extra,
    ]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_3d_volumes_train_with_dp_and_encryption(tmp_path):
    # Prepare: 90 NIfTI volumes, a bright ball in class 1
    manifest = nifti_export(tmp_path / "vols", 90, size=12)

    # Execute
    run_pipeline(
        tmp_path / "run",
        *_manifest(manifest, "data.spatial_dims=3", "data.image_size=12", "federation.rounds=4", "model=cnn"),
        f"federation.hospital_dir={tmp_path / 'hospitals'}",
    )

    # Assert: private, encrypted, and the saved model is the 3D network the config builds
    summary = _summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["encrypted"] and summary["private"]
    assert 0 < max(summary["epsilon"].values()) <= 8.0
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    model = build_model(cfg, 1, 2, 12)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt"))
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    assert summary["test"]["auc"] > 0.75


def test_warm_start_keeps_frozen_layers_through_dp_and_encryption(tmp_path):
    # Prepare: a DICOM export, and public weights made elsewhere (another seed) to start from
    manifest = dicom_export(tmp_path / "export", 150, size=32)
    overrides = _manifest(manifest, "data.image_size=32", "model=cnn")
    pretrained = build_model(compose_cfg(*overrides, "seed=99"), 1, 2, 32)
    save_model(pretrained, tmp_path / "public.pt")

    # Execute: linear probing, the convolutional body frozen
    run_pipeline(
        tmp_path / "run",
        *overrides,
        f"model.checkpoint={tmp_path / 'public.pt'}",
        "model.freeze=[net]",
        f"federation.hospital_dir={tmp_path / 'hospitals'}",
    )

    # Assert: the frozen weights are the checkpoint's, bit for bit; the head moved
    final = torch.load(tmp_path / "run" / "model.pt")
    start = pretrained.state_dict()
    body = [k for k in start if k.startswith("net.")]
    assert body and all(torch.equal(final[k], start[k]) for k in body)
    assert not torch.equal(final["final.1.weight"], start["final.1.weight"])
    assert _summary(tmp_path / "run")["test"]["auc"] > 0.75


def test_multi_label_run_reports_every_finding(tmp_path):
    # Prepare
    labels = multi_label_export(tmp_path / "cxr", 240, size=32)

    # Execute
    run_pipeline(
        tmp_path / "run",
        *_manifest(labels, "data.multi_label=true", "data.image_size=32", "federation.rounds=3"),
        f"federation.hospital_dir={tmp_path / 'hospitals'}",
    )

    # Assert: per-finding AUCs, their macro mean as the headline, which the comparison reads
    test = _summary(tmp_path / "run")["test"]
    per_label = test["per_label"]
    assert set(per_label) == {"Cardiomegaly", "Effusion"}
    assert test["auc"] == pytest.approx(np.mean([m["auc"] for m in per_label.values()]))
    assert all(m["auc"] > 0.75 for m in per_label.values())
    compared = run_metrics(load_run(tmp_path / "run"))
    assert compared["test_auc"] == pytest.approx(test["auc"])
    assert compared["test_auc_per_label"] == ", ".join(f"{k} {m['auc']:.4f}" for k, m in per_label.items())


def _missing_file(export: Path, manifest: Path) -> list[str]:
    (export / "patient0004" / "study1" / "IM00004.dcm").unlink()
    return []


@pytest.mark.parametrize(
    ("make_bad", "expected"),
    [
        # the other bad inputs (a label outside data.classes, a missing column) raise the same
        # DataError in-process: tests/task/test_hospital_files.py
        (_missing_file, ["IM00004.dcm", "1 of 12 image files cannot be used", "(not found)"]),
    ],
)
def test_a_bad_input_stops_the_command_with_one_line(tmp_path, make_bad, expected):
    # Prepare
    manifest = dicom_export(tmp_path / "export", 12, size=8)
    extra = make_bad(tmp_path / "export", manifest)

    # Execute: the user's command, before any simulation starts
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"run_dir={tmp_path / 'run'}", *_manifest(manifest), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert: non-zero, one line saying what is wrong, no traceback
    output = done.stdout + done.stderr
    assert done.returncode != 0
    lines = [line for line in output.splitlines() if expected[0] in line]
    assert len(lines) == 1 and all(part in lines[0] for part in expected), output[-2000:]
    assert "Traceback" not in output
