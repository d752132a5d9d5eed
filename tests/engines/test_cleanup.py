"""scripts/cleanup.py: which private folders belong to abandoned runs, and that only those are removed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakes import held_elsewhere

from pipeline.engines import cleanup
from pipeline.engines.workspace import OWNER_FILE, private_folder, private_lock, read_owner, write_owner
from pipeline.errors import RunFailed

DAY = 86400


def run_folder(root: Path, name: str, status: str | None = None, ended_days_ago: float = 0) -> Path:
    run = root / "outputs" / name
    run.mkdir(parents=True)
    if status is not None:
        summary = run / "summary.json"
        summary.write_text(json.dumps({"status": status}))
        when = time.time() - ended_days_ago * DAY
        os.utime(summary, (when, when))
    return run


def private_of(hospitals: Path, run: Path, prefix: str = "") -> Path:
    folder = private_folder(hospitals, run, prefix)
    write_owner(folder, run)
    (folder / "state").mkdir()
    (folder / "state" / "ledger.json").write_text("x" * 100)
    return folder


@pytest.fixture
def hospitals(tmp_path) -> dict[str, Path]:
    """A hospital_dir with one private folder of each kind."""
    root = tmp_path / "hospitals"
    gone = run_folder(tmp_path, "gone")
    folders = {
        "gone": private_of(root, gone),
        "old": private_of(root, run_folder(tmp_path, "old", "completed", ended_days_ago=10), prefix="deploy-"),
        "stopped": private_of(root, run_folder(tmp_path, "stopped", "stopped_early", ended_days_ago=10)),
        "recent": private_of(root, run_folder(tmp_path, "recent", "completed", ended_days_ago=1)),
        "paused": private_of(root, run_folder(tmp_path, "paused", "paused", ended_days_ago=100)),
        "running": private_of(root, run_folder(tmp_path, "running")),
    }
    gone.rmdir()
    folders["unknown"] = root / "22-00-00-0123456789ab"  # made before owner.json existed
    folders["unknown"].mkdir()
    folders["ledgers"] = root / "lifetime"  # something else kept there (privacy.lifetime_dir)
    folders["ledgers"].mkdir()
    return folders


def test_owner_json_names_the_run_folder_and_is_kept_on_resume(tmp_path):
    folder, run = tmp_path / "h" / "p", tmp_path / "run"

    first = write_owner(folder, run)
    created = read_owner(folder)["created"]
    write_owner(folder, tmp_path / "other")

    assert first == folder / OWNER_FILE and read_owner(folder) == {"run_dir": str(run.resolve()), "created": created}
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_abandoned_folders_are_those_of_gone_or_long_ended_runs_and_unknown_owners(hospitals):
    found = {d.folder: d for d in cleanup.abandoned(hospitals["gone"].parent, older_than_days=7)}

    assert set(found) == {hospitals[k] for k in ("gone", "old", "stopped", "unknown")}
    assert "no longer exists" in found[hospitals["gone"]].reason
    assert "ended completed 10.0 days ago" in found[hospitals["old"]].reason
    assert found[hospitals["unknown"]].unknown_owner and "unknown owner" in found[hospitals["unknown"]].reason
    assert not cleanup.decide(hospitals["paused"], 7).abandoned  # resumable: never, however old
    assert not cleanup.decide(hospitals["running"], 7).abandoned
    assert "not older than 7" in cleanup.decide(hospitals["recent"], 7).reason
    assert cleanup.decide(hospitals["recent"], 0.5).abandoned
    assert hospitals["ledgers"] not in cleanup.private_folders(hospitals["gone"].parent)


def test_a_locked_folder_is_not_abandoned_and_never_removed(hospitals):
    folder = hospitals["gone"]
    with held_elsewhere(folder, beside=True) as run:
        decision = cleanup.decide(folder, 7)
        with pytest.raises(RunFailed, match=f"pid {run.pid} "):
            cleanup.remove(folder)

    assert not decision.abandoned and f"in use by a live run (pid {run.pid} " in decision.reason
    assert folder.is_dir()


def test_a_folder_locked_by_this_process_is_in_use_too(hospitals):
    with private_lock(hospitals["old"]):
        assert not cleanup.decide(hospitals["old"], 7).abandoned


def test_listing_removes_nothing(hospitals, capsys):
    root = hospitals["gone"].parent

    rc = cleanup.main(["--hospital-dir", str(root)])

    out = capsys.readouterr().out
    assert rc == 0 and all(folder.exists() for folder in hospitals.values())
    size = cleanup.folder_size(hospitals["gone"])
    assert size > 100 and f"{hospitals['gone']}  {size} B  its run folder " in out and "no longer exists" in out
    assert str(hospitals["recent"]) not in out and "4 abandoned; nothing removed (--delete removes them)" in out


def test_delete_removes_the_abandoned_folders_and_keeps_unknown_owners_without_the_flag(hospitals, capsys):
    root = hospitals["gone"].parent
    with held_elsewhere(hospitals["stopped"], beside=True):
        rc = cleanup.main(["--hospital-dir", str(root), "--delete"])
    out = capsys.readouterr().out

    assert rc == 0
    assert not hospitals["gone"].exists() and not hospitals["old"].exists()
    assert f"removed {hospitals['gone']}" in out and f"kept {hospitals['unknown']}" in out
    kept = ("stopped", "recent", "paused", "running", "unknown", "ledgers")
    assert all(hospitals[k].exists() for k in kept)
    # only the lock of the run killed above is left (stale: the next cleanup takes it over)
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [f".{hospitals['stopped'].name}.lock"]

    assert cleanup.main(["--hospital-dir", str(root), "--delete", "--include-unknown"]) == 0
    assert not hospitals["unknown"].exists() and not hospitals["stopped"].exists()
    assert hospitals["ledgers"].exists() and hospitals["paused"].exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_a_bad_number_of_days_is_refused_in_one_line(tmp_path, capsys):
    rc = cleanup.main(["--hospital-dir", str(tmp_path), "--older-than-days", "-1"])

    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --older-than-days -1: give a number of days >= 0\n"


def test_a_missing_hospital_dir_has_nothing_to_clean(tmp_path, capsys):
    assert cleanup.main(["--hospital-dir", str(tmp_path / "none")]) == 0
    assert "no abandoned private folders" in capsys.readouterr().out
