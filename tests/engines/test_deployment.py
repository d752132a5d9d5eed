"""Flower's Deployment Engine on loopback: certificates, node keys, hospitals' own data, the whole run.

The pure parts (certificates, key files, run/node config, data files) are tested directly; the
end-to-end tests start a real SuperLink (TLS, SuperNode authentication) and real SuperNodes, and
check that every process they started is gone afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SMALL, compose_cfg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from omegaconf import OmegaConf

from pipeline.engines.certificates import make_certificates, make_node_key
from pipeline.engines.deployment import LocalDeployment, flwr_processes, processes_with_environment
from pipeline.engines.run_config import node_config_arg, run_config_toml
from pipeline.errors import ConfigError, DataError
from pipeline.reporting.recorder import read_metrics
from pipeline.task.sites import export_hospital_files, hospital_data, own_hospital_data

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


# --- certificates and keys ---------------------------------------------------------------
def test_certificates_chain_to_the_ca_and_name_the_superlink_addresses(tmp_path):
    certs = make_certificates(tmp_path, ["127.0.0.1", "localhost"], days=2)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())

    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    for key in (certs.ca_key, certs.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        serialization.load_pem_private_key(key.read_bytes(), password=None)


def test_certificates_refuse_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="hosts is empty"):
        make_certificates(tmp_path, [])
    with pytest.raises(ValueError, match="days=0"):
        make_certificates(tmp_path, ["127.0.0.1"], days=0)


def test_node_key_pair_is_openssh_ecdsa_p384_and_private_key_is_owner_only(tmp_path):
    private, public = make_node_key(tmp_path / "hospital_0")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert key.curve.name == "secp384r1"
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_make_certs_script_writes_ca_server_and_node_keys(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/make_certs.py", "--out", str(tmp_path), "--node-keys", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "ca.crt",
        "ca.key",
        "hospital_0/node_key",
        "hospital_0/node_key.pub",
        "hospital_1/node_key",
        "hospital_1/node_key.pub",
        "superlink.crt",
        "superlink.key",
    ]
    bad = subprocess.run(
        [sys.executable, "scripts/make_certs.py", "--out", str(tmp_path), "--node-keys", "-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--node-keys=-1" in bad.stderr


# --- run config and node config ------------------------------------------------------------
def test_run_config_carries_the_same_resolved_experiment_as_a_simulation(tmp_path):
    cfg = compose_cfg(*SMALL)
    text = run_config_toml(cfg, tmp_path / "run", tmp_path / "server_public.ctx")
    values = tomllib.loads(text)
    assert OmegaConf.create(values["experiment-yaml"]) == cfg
    assert values["run-dir"] == str((tmp_path / "run").resolve())
    assert values["public-context"] == str((tmp_path / "server_public.ctx").resolve())
    assert tomllib.loads(run_config_toml(cfg, tmp_path, None))["public-context"] == ""
    # only keys the app declares in pyproject's [tool.flwr.app.config] can be set by --run-config
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(values) == set(declared)


def test_node_config_quotes_strings_as_toml():
    text = node_config_arg({"partition-id": 2, "data-root": "/data/site b", "state-dir": 'x"y'})
    assert text == 'partition-id=2 data-root="/data/site b" state-dir="x\\"y"'
    assert tomllib.loads(text.replace(" data-root", "\ndata-root").replace(" state-dir", "\nstate-dir")) == {
        "partition-id": 2,
        "data-root": "/data/site b",
        "state-dir": 'x"y',
    }


def test_local_deployment_config_is_checked():
    assert compose_cfg("deployment=local").deployment.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="deployment.host='10.0.0.5'"):
        compose_cfg("deployment=local", "deployment.host=10.0.0.5")
    with pytest.raises(ConfigError, match="deployment.port=70000"):
        compose_cfg("deployment=local", "deployment.port=70000")
    with pytest.raises(ConfigError, match="data.kind='synthetic'"):
        compose_cfg("deployment=local", "data=synthetic")
    with pytest.raises(ConfigError, match="federation.mode='centralized'"):
        compose_cfg("deployment=local", "federation.mode=centralized")


# --- hospitals' own data ------------------------------------------------------------------
def test_hospital_files_give_each_hospital_exactly_its_simulated_share(tmp_path):
    cfg = compose_cfg(*SMALL)
    paths = export_hospital_files(cfg, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [f"hospital_{i}/pneumoniamnist.npz" for i in range(3)]
    for i, path in enumerate(paths):
        simulated, own = hospital_data(cfg, i), own_hospital_data(cfg, str(path.parent))
        assert own.num_train == simulated.num_train and len(own.val) == len(simulated.val)
        assert (own.channels, own.num_classes, own.image_size) == (1, 2, 28)
        assert torch.equal(own.train.x, simulated.train.x)
        assert torch.equal(own.train.y, simulated.train.y)
        assert torch.equal(own.val.x, simulated.val.x)
        with np.load(path) as npz:
            assert len(npz["test_images"]) == 0  # a hospital file carries no test images


def test_own_data_without_validation_split_keeps_back_val_fraction(tmp_path):
    cfg = compose_cfg(*SMALL)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        train_images=rng.integers(0, 255, (200, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(200) % 2).reshape(-1, 1).astype(np.uint8),
    )
    own = own_hospital_data(cfg, str(tmp_path))
    assert (own.num_train, len(own.val)) == (180, 20)  # federation.val_fraction = 0.1


def test_own_data_problems_are_named(tmp_path):
    cfg = compose_cfg(*SMALL)
    with pytest.raises(DataError, match="pneumoniamnist.npz not found"):
        own_hospital_data(cfg, str(tmp_path / "missing"))
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        train_images=np.zeros((10, 28, 28), np.uint8),
        train_labels=np.ones((10, 1), np.uint8),
    )
    with pytest.raises(DataError, match="single class"):
        own_hospital_data(cfg, str(tmp_path))


# --- real SuperLink and SuperNodes -----------------------------------------------------------
@pytest.mark.e2e
def test_unregistered_or_unverified_supernodes_are_refused_and_everything_stops(tmp_path):
    with pytest.raises(RuntimeError, match="leaving on purpose"):
        with LocalDeployment(tmp_path / "ws", startup_timeout=60) as link:
            good_key, good_pub = make_node_key(tmp_path / "good")
            stranger_key, _ = make_node_key(tmp_path / "stranger")
            link.register(good_pub, "good")
            stranger = link.start_supernode("stranger", {"partition-id": 0}, stranger_key, link.ca_cert, max_wait=10)
            no_ca = link.start_supernode("no_ca", {"partition-id": 1}, good_key, None, max_wait=10)
            good = link.start_supernode("good", {"partition-id": 2}, good_key, link.ca_cert, max_wait=10)

            assert stranger.wait(timeout=90) != 0
            assert no_ca.wait(timeout=90) != 0
            assert "Failed to activate SuperNode" in (link.logs / "stranger.log").read_text()
            assert "CERTIFICATE_VERIFY_FAILED" in (link.logs / "no_ca.log").read_text()
            for _ in range(30):
                nodes = link.connected_nodes()
                if nodes and all(n["status"] == "online" for n in nodes):
                    break
            assert len(nodes) == 1 and nodes[0]["status"] == "online"  # only the registered, verified node
            assert good.poll() is None
            raise RuntimeError("leaving on purpose: the context must still stop every process")
    assert flwr_processes(tmp_path / "ws" / "flwr_home") == []
    assert processes_with_environment(str(tmp_path)) == []


@dataclass
class KilledAndResumed:
    """The suite's deployment: what its SIGKILL left behind, and the resumed command's result."""

    run_dir: Path
    private: Path  # federation.hospital_dir: the deployment's workspace lives here
    workspace: Path
    states: list[Path]  # each hospital's state file of this study, as the kill left them
    leftovers: list[int]  # processes of the killed deployment still alive 30 s after the kill
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> KilledAndResumed:
    """A DP + CKKS run of 2 rounds on a local SuperLink + 3 SuperNodes (TLS, node authentication),
    SIGKILLed (its whole process group) while round 2 trains, then resumed with
    ``python -m pipeline.run resume=<run folder>``.

    One deployment serves every end-to-end check: the killed process ran round 1 from start to
    evaluation, the resumed one ran round 2, the final test and the clean-up, so each phase of an
    uninterrupted deployment ran in one of them (a second, uninterrupted deployment cost 2 minutes).
    """
    run_dir, private = tmp_path_factory.mktemp("deployed") / "run", tmp_path_factory.mktemp("hospitals")
    cmd = [sys.executable, "scripts/deploy_local.py", f"run_dir={run_dir}", *SMALL]
    cmd.append(f"federation.hospital_dir={private}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        progress = _json(run_dir / "checkpoint.json").get("in_progress", {})
        if progress.get("round") == 2 and not progress.get("evaluating"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the deployment ended before round 2"
    time.sleep(random.uniform(0.0, 3.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    (workspace,) = [p for p in private.iterdir() if p.is_dir()]
    study = OmegaConf.load(run_dir / "config.yaml").study_id
    states = sorted(workspace.glob(f"hospitals/hospital_*/state/{study}/hospital_*.npz"))
    gone = time.monotonic() + 30  # the SuperLink, SuperNodes and services die with the process that started them
    while flwr_processes(workspace / "flwr_home") and time.monotonic() < gone:
        time.sleep(0.2)
    leftovers = flwr_processes(workspace / "flwr_home")
    resumed = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"resume={run_dir}"], cwd=ROOT, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    return KilledAndResumed(run_dir, private, workspace, states, leftovers, resumed)


@pytest.mark.e2e
def test_a_deployment_killed_mid_round_resumes_with_every_hospital_ledger_kept(deployed):
    # the killed run kept its workspace and state; the resumed one completes round 2 with each
    # hospital charged once a round (the ledgers were kept), then leaves nothing behind
    assert len(deployed.states) == 3 and deployed.leftovers == []
    resumed = deployed.resumed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    run_dir = deployed.run_dir
    summary = _json(run_dir / "summary.json")
    assert summary["status"] == "completed" and summary["engine"] == "deployment"
    assert [r["round"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2]
    hospitals = _json(run_dir / "privacy.json")["hospitals"]
    assert sorted(hospitals) == ["0", "1", "2"]
    assert all(h["rounds_trained"] == 2 and len(h["history"]) == 1 for h in hospitals.values()), hospitals
    assert all(0 < e <= 8.0 for e in summary["epsilon"].values()) and len(summary["epsilon"]) == 3
    assert not deployed.workspace.exists() and flwr_processes(deployed.workspace / "flwr_home") == []


@pytest.mark.e2e
def test_deployment_runs_to_the_end_with_dp_and_encryption_and_leaves_nothing(deployed):
    run_dir, private = deployed.run_dir, deployed.private
    assert deployed.resumed.returncode == 0, deployed.resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["engine"] == "deployment"
    assert summary["encrypted"] is True and summary["rounds_completed"] == 2 and summary["num_hospitals"] == 3
    assert 0.5 < summary["test"]["auc"] <= 1.0
    epsilons = summary["epsilon"]
    assert len(epsilons) == 3 and all(0 < e <= 8.0 for e in epsilons.values())
    for name in ("config.yaml", "metrics.csv", "curves.png", "model.pt"):
        assert (run_dir / name).stat().st_size > 0
    assert OmegaConf.load(run_dir / "config.yaml").deployment.insecure is False
    assert list(private.iterdir()) == []  # the workspace (keys, certificates, data copies) is gone
    assert processes_with_environment(str(private)) == []


@pytest.mark.e2e
def test_deployment_and_simulation_of_one_config_agree(deployed, private_run, tmp_path):
    run_dir = deployed.run_dir
    sim_dir = private_run  # the same SMALL config on the simulation engine
    dep, sim = (json.loads((d / "summary.json").read_text()) for d in (run_dir, sim_dir))
    # the same plan spends the same budget; the DP noise is fresh in each run, so the models differ
    assert sorted(dep["epsilon"].values()) == pytest.approx(sorted(sim["epsilon"].values()), abs=1e-6)
    assert dep["private"] is sim["private"] is True
    # both trained (an untrained model scores about 0.5); the fresh noise of 2 private rounds moves the
    # test AUC of :data:`SMALL` by a few hundredths between runs (0.863 and 0.897 were seen)
    assert min(dep["test"]["auc"], sim["test"]["auc"]) > 0.75
    assert dep["test"]["auc"] == pytest.approx(sim["test"]["auc"], abs=0.08)
    a, b = (torch.load(d / "model.pt") for d in (run_dir, sim_dir))
    assert any(not torch.equal(a[k], b[k]) for k in a), "two private runs of one config must not share their noise"
    done = subprocess.run(
        [sys.executable, "scripts/compare.py", str(sim_dir), str(run_dir), "--out", str(tmp_path / "cmp")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "deployment (TLS)" in table and "simulation" in table


@pytest.mark.e2e
def test_a_failed_deployment_stops_every_process_and_keeps_its_workspace(tmp_path):
    private = tmp_path / "hospitals"
    cmd = [
        sys.executable,
        "scripts/deploy_local.py",
        f"run_dir={tmp_path / 'run'}",
        *SMALL,
        f"federation.hospital_dir={private}",
        "federation.num_hospitals=2",  # a third hospital adds nothing to this check
        "encryption.colluders=0",
        "deployment.run_timeout=3",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "did not finish within 3 s" in done.stderr + done.stdout
    (workspace,) = private.iterdir()
    assert f"workspace kept for inspection (logs, keys): {workspace}" in done.stderr + done.stdout
    assert (workspace / "logs" / "superlink.log").exists()
    assert processes_with_environment(str(tmp_path)) == []


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
