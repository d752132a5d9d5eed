"""The hospital's long-running service: a real service process answering over its Unix socket.

The service must answer exactly as the ClientApp would in its own process (same reply), keep its
socket owner-only, and fail loudly: a missing service, a handler error, a folder others can enter.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose_cfg
from flwr.app import ConfigRecord, Context, Message, RecordDict
from omegaconf import OmegaConf

from pipeline.flower import client_app
from pipeline.flower import messages as M
from pipeline.flower.context import EXPERIMENT_KEY, PARTITION_KEY, SERVICE_KEY, STATE_DIR_KEY
from pipeline.flower.hospital_service import ServiceUnavailable, ask, check_folder


def _context(cfg, state_dir: Path, service: Path | None = None) -> Context:
    node = {PARTITION_KEY: 0, STATE_DIR_KEY: str(state_dir)}
    if service is not None:
        node[SERVICE_KEY] = str(service)
    run = {EXPERIMENT_KEY: OmegaConf.to_yaml(cfg)}
    return Context(run_id=7, node_id=11, node_config=node, state=RecordDict(), run_config=run)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """What flwr-clientapp sets before it builds messages (Message() reads the run and node ids)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 11)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _query() -> Message:
    return Message(RecordDict({M.CONFIG: ConfigRecord({M.ROUND: 0})}), dst_node_id=11, message_type=M.QUERY)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A real ``python -m pipeline.flower.hospital_service`` at a socket path too long for AF_UNIX."""
    folder = tmp_path_factory.mktemp("svc") / ("deep-" * 20) / "service"
    path = folder / "hospital.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.flower.hospital_service", "--socket", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the service did not listen within 120 s"
        time.sleep(0.1)
    yield path
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists()  # the socket goes with the service


def test_the_service_answers_as_the_clientapp_does_in_its_own_process(service, tmp_path):
    cfg = compose_cfg("privacy=none", "encryption=none", "data=synthetic", "data.num_samples=240")
    relayed = client_app._reply(_query(), _context(cfg, tmp_path / "a", service), M.QUERY)
    inline = client_app._reply(_query(), _context(cfg, tmp_path / "b"), M.QUERY)

    got, want = relayed.content[M.CONFIG], inline.content[M.CONFIG]
    assert dict(got) == dict(want)
    assert got[M.NUM_TRAIN] > 0 and got[M.NUM_PARAMS] > 0
    assert M.TIMING in relayed.content  # the service's own phase timings travel back


def test_the_socket_and_its_folder_are_owner_only(service):
    assert stat.S_IMODE(service.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.parent.stat().st_mode) == 0o700


def test_a_handler_error_in_the_service_is_raised_in_the_clientapp(service, tmp_path):
    cfg = compose_cfg("privacy=none", "encryption=none", "data=synthetic", "data.num_samples=240")
    train = RecordDict({M.CONFIG: ConfigRecord({M.ROUND: 1})})  # no N_REF: the handler cannot train

    with pytest.raises(RuntimeError, match="hospital service: KeyError"):
        ask(service, M.TRAIN, train, _context(cfg, tmp_path))


def test_no_service_at_the_socket_is_named_with_the_command_that_starts_one(tmp_path):
    cfg = compose_cfg("privacy=none", "encryption=none")
    missing = tmp_path / "nothing.sock"

    pattern = f"no hospital service listens at {re.escape(str(missing))}.*--socket {re.escape(str(missing))}"
    with pytest.raises(ServiceUnavailable, match=pattern):
        ask(missing, M.QUERY, RecordDict(), _context(cfg, tmp_path))


def test_a_socket_folder_others_can_enter_is_refused(tmp_path):
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    os.chmod(open_folder, 0o755)

    with pytest.raises(PermissionError, match=f"{re.escape(str(open_folder))} is mode 755.*chmod 700"):
        check_folder(open_folder)
    check_folder(tmp_path / "new" / "service")
    assert stat.S_IMODE((tmp_path / "new" / "service").stat().st_mode) == 0o700


def test_a_second_service_on_a_live_socket_is_refused(service, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.flower.hospital_service", "--socket", str(service)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: another hospital service listens at {service}"
    cfg = compose_cfg("privacy=none", "encryption=none", "data=synthetic", "data.num_samples=240")
    still = ask(service, M.QUERY, _query().content, _context(cfg, tmp_path))  # the live one still answers
    assert still[M.CONFIG][M.NUM_TRAIN] > 0
