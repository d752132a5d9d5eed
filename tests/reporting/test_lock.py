"""FolderLock: one run per folder; a live holder is named in one line, a dead one's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, ROOT, compose_cfg
from fakes import held_elsewhere

from pipeline.errors import RunFailed
from pipeline.reporting.lock import LOCK_NAME, FolderLock, live_holder, process_start_time, read_holder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, **fields) -> Path:
    record = {"pid": 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z", "command": "x"}
    record.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def test_acquire_writes_an_owner_only_record_and_release_removes_it(tmp_path):
    lock = FolderLock(tmp_path / "run")

    with lock:
        path = tmp_path / "run" / LOCK_NAME
        holder = read_holder(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        assert holder.process_start == process_start_time(os.getpid()) is not None
        assert holder.started.endswith("Z") and holder.command == " ".join(sys.orig_argv)
        assert lock.held

    assert not path.exists() and not lock.held


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with held_elsewhere(run) as other:
        with pytest.raises(RunFailed) as refused:
            FolderLock(run).acquire()

    message = str(refused.value)
    assert "\n" not in message
    who = f"pid {other.pid} on host {socket.gethostname()}, started 20"
    assert message.startswith(f"{run.resolve()} is in use by another run ({who}")
    assert f"{Path(sys.executable).name} -c import sys, time from pipeline.reporting.lock" in message
    assert message.endswith("wait for it to finish or stop it, or choose another folder")


def test_the_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    path = write_lock(tmp_path, pid=pid)

    with caplog.at_level(logging.WARNING, logger="fedmed"), FolderLock(tmp_path):
        assert read_holder(path).pid == os.getpid()

    assert f"pid {pid} is no longer running" in caplog.text


def test_a_reused_pid_with_another_start_time_is_stale(tmp_path):
    with held_elsewhere(tmp_path / "other") as live:
        start = process_start_time(live.pid)
        path = write_lock(tmp_path, pid=live.pid, process_start=start + 1)
        assert live_holder(path) is None

        with FolderLock(tmp_path):
            assert read_holder(path).pid == os.getpid()

        write_lock(tmp_path, pid=live.pid, process_start=start)  # the same start time: that process holds it
        with pytest.raises(RunFailed, match=f"pid {live.pid} "):
            FolderLock(tmp_path).acquire()


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    outer, inner = FolderLock(tmp_path), FolderLock(tmp_path / "." / "")
    path = tmp_path / LOCK_NAME

    outer.acquire()
    inner.acquire()
    outer.release()
    assert read_holder(path).pid == os.getpid()
    inner.release()

    assert not path.exists()


def test_a_half_written_lock_is_in_use_while_young_and_stale_when_old(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.reporting.lock.HALF_WRITTEN_SECONDS", 0.5)
    path = tmp_path / LOCK_NAME
    path.write_text('{"pid": 12')

    assert live_holder(path) is not None
    old = time.time() - 60
    os.utime(path, (old, old))
    with FolderLock(tmp_path):
        assert read_holder(path).pid == os.getpid()


def test_release_leaves_a_lock_file_that_no_longer_names_this_process(tmp_path):
    lock = FolderLock(tmp_path).acquire()
    path = write_lock(tmp_path, pid=dead_pid())

    lock.release()

    assert path.exists()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    path = write_lock(tmp_path, pid=dead_pid(), host="elsewhere.example")

    with pytest.raises(RunFailed) as refused:
        FolderLock(tmp_path).acquire()

    assert "on host elsewhere.example" in str(refused.value) and f"delete {path}" in str(refused.value)


def test_a_lock_beside_the_folder_survives_its_removal(tmp_path):
    folder = tmp_path / "private-0123456789ab"
    folder.mkdir()

    with FolderLock.beside(folder) as lock:
        shutil.rmtree(folder)
        assert lock.lock_file == tmp_path / ".private-0123456789ab.lock" and lock.lock_file.exists()
        with held_elsewhere(tmp_path / "x"):  # (a live process elsewhere does not change it)
            assert read_holder(lock.lock_file).pid == os.getpid()

    assert not lock.lock_file.exists()


def test_a_second_run_in_a_locked_run_folder_is_refused_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    with held_elsewhere(run) as other:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.run", f"run_dir={run}", f"data.root={DATA_ROOT}", "federation.rounds=1"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    assert done.returncode == 1, done.stdout + done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("run failed:") and f"pid {other.pid} " in line
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no config.yaml, no .hydra/, no run.log


def test_execute_takes_the_lock_before_it_writes_the_config(tmp_path):
    from pipeline.run import execute

    run = tmp_path / "run"
    cfg = compose_cfg(f"data.root={DATA_ROOT}", "federation.rounds=1", f"federation.hospital_dir={tmp_path / 'h'}")
    with held_elsewhere(run) as other, pytest.raises(RunFailed, match=f"pid {other.pid} "):
        execute(cfg, run)

    assert not (run / "config.yaml").exists()
