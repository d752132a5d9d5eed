"""What a researcher sees: a console without library noise (run.log keeps it), and interrupts.

Ctrl-C (SIGINT) or SIGTERM stops the simulation within seconds: Ray and every process of the run
gone, one line naming the resume command, exit 130 / 143, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import CONSOLE, ROOT, SMALL

from pipeline.engines.deployment import processes_with_environment
from pipeline.reporting.recorder import read_metrics

pytestmark = pytest.mark.e2e
RESUME = "saved in {run_dir}; continue with: python -m pipeline.run resume={run_dir}"
TWO = [*SMALL, "federation.num_hospitals=2", "encryption.colluders=0"]
NOISE = ("[flwr][DEBUG]", "DEPRECATED FEATURE", "Optimal order", "Secure RNG", "FutureWarning", "Manually terminating")


def test_the_console_shows_our_lines_and_run_log_keeps_the_libraries(private_run):
    console = (private_run.parent / CONSOLE).read_text()
    kept = (private_run / "run.log").read_text()
    assert not [line for line in console.splitlines() if any(n in line for n in NOISE)], console
    assert "round 2/2 | 3 hospitals" in console and "federated (3 hospitals, 2 rounds)" in console
    assert "[flwr][DEBUG]" in kept and "round 2/2 | 3 hospitals" in kept
    summary = json.loads((private_run / "summary.json").read_text())
    assert summary["devices"] == {f"hospital {h}": "cpu" for h in range(3)}  # as the hospitals reported it


@pytest.mark.parametrize(
    "signum, code, after_line, saved",
    [
        (signal.SIGINT, 130, "round 1/2", RESUME),
        (signal.SIGTERM, 143, "round 1/2", RESUME),  # then resumed to the end
        # while round 1 trains: the failed round is not presented as a result (no stopped_early summary)
        (signal.SIGINT, 130, "training images", "no round is complete yet, the run is " + RESUME),
    ],
)
def test_an_interrupt_stops_everything_within_seconds_and_names_the_resume_command(
    tmp_path, signum, code, after_line, saved
):
    run_dir, tag = tmp_path / "run", f"fedmed-test-{uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", *TWO, "federation.rounds=2"]
    proc = subprocess.Popen(
        [*cmd, f"federation.hospital_dir={tmp_path / 'h'}"],
        cwd=ROOT, env={**os.environ, "FEDMED_TEST_TAG": tag},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 400
    while not any(after_line in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "".join(lines)[-3000:]

    proc.send_signal(signum)
    sent = time.monotonic()
    proc.wait(timeout=30)
    took = time.monotonic() - sent
    reader.join(timeout=5)

    output = "".join(lines)
    after = output[output.index(after_line) :]
    assert proc.returncode == code and took < 15, (took, output[-3000:])
    interrupted = [line for line in after.splitlines() if "interrupted" in line]
    assert len(interrupted) == 1 and saved.format(run_dir=run_dir) in interrupted[0], after
    assert "Traceback" not in output and len(after.strip().splitlines()) <= 3, after
    time.sleep(1)
    assert processes_with_environment(tag) == []  # no Ray process (or any other) of the run is left
    assert not (run_dir / "summary.json").exists()  # an interrupted run presents no result
    assert not list(run_dir.rglob("*.tmp"))  # no half-written file
    if after_line == "round 1/2":
        assert json.loads((run_dir / "checkpoint.json").read_text())["completed_round"] == 1
        assert len(read_metrics(run_dir / "metrics.csv")) >= 1  # the completed round's row was kept
    if signum == signal.SIGTERM:  # what was saved is enough to finish the private run
        resumed = subprocess.run(
            [sys.executable, "-m", "pipeline.run", f"resume={run_dir}"], cwd=ROOT, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        result = json.loads((run_dir / "summary.json").read_text())
        assert result["status"] == "completed" and [r["round"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2]
        assert len(result["epsilon"]) == 2 and all(7.5 < e <= 8.0 for e in result["epsilon"].values())
