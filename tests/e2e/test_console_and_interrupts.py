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
from conftest import ROOT, SMALL, run_pipeline

from pipeline.engines.deployment import processes_with_environment

pytestmark = pytest.mark.e2e
RESUME = "saved in {run_dir}; continue with: python -m pipeline.run resume={run_dir}"
TWO = [*SMALL, "federation.num_hospitals=2", "encryption.colluders=0"]
NOISE = ("[flwr][DEBUG]", "DEPRECATED FEATURE", "Optimal order", "Secure RNG", "FutureWarning", "Manually terminating")


def test_the_console_shows_our_lines_and_run_log_keeps_the_libraries(tmp_path):
    done = run_pipeline(tmp_path / "run", *TWO, "federation.rounds=1", f"federation.hospital_dir={tmp_path / 'h'}")

    console = done.stdout + done.stderr
    kept = (tmp_path / "run" / "run.log").read_text()
    assert not [line for line in console.splitlines() if any(n in line for n in NOISE)], console
    assert "round 1/1 | 2 hospitals" in console and "federated (2 hospitals, 1 rounds)" in console
    assert "[flwr][DEBUG]" in kept and "round 1/1 | 2 hospitals" in kept
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["devices"] == {"hospital 0": "cpu", "hospital 1": "cpu"}  # as the hospitals reported it


@pytest.mark.parametrize(
    "signum, code, after_line, saved",
    [
        (signal.SIGINT, 130, "round 1/4", RESUME),
        (signal.SIGTERM, 143, "round 1/4", RESUME),
        # while round 1 trains: the failed round is not presented as a result (no stopped_early summary)
        (signal.SIGINT, 130, "training images", "no round is complete yet, the run is " + RESUME),
    ],
)
def test_an_interrupt_stops_everything_within_seconds_and_names_the_resume_command(
    tmp_path, signum, code, after_line, saved
):
    run_dir, tag = tmp_path / "run", f"fedmed-test-{uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "pipeline.run", f"run_dir={run_dir}", *TWO, "federation.rounds=4"]
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
    if after_line == "round 1/4":
        assert json.loads((run_dir / "checkpoint.json").read_text())["completed_round"] >= 1
