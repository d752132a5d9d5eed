"""The consortium's forked process: a separate process whose imports and failures stay its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.engines.forked import run_forked
from pipeline.errors import RunFailed


def _write_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def _fail() -> None:
    raise ValueError("bad aggregate\nsecond line")


def _refuse() -> None:
    raise RunFailed("the consortium refuses to replay an aggregate: round 2")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_target_runs_in_another_process(tmp_path):
    out = tmp_path / "pid"

    run_forked("the step", _write_pid, str(out))

    assert int(out.read_text()) != os.getpid()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (_fail, "the step failed: ValueError: bad aggregate$"),
        (_refuse, "the step failed: the consortium refuses to replay an aggregate: round 2$"),
        (_die, "the step failed: its process ended with exit code -9$"),
    ],
)
def test_a_failing_child_is_one_line_naming_the_step(target, message):
    with pytest.raises(RunFailed, match=message):
        run_forked("the step", target)


def test_the_key_module_the_child_loads_never_reaches_the_driver():
    # Prepare: the driver's process as engines/simulation.py leaves it, then a child that loads the keys
    code = "\n".join(
        [
            "import sys",
            "from pipeline.engines import simulation",
            "from pipeline.engines.forked import run_forked",
            "def load_keys():",
            "    import pipeline.secagg.keys",
            "    assert 'pipeline.secagg.keys' in sys.modules",
            "run_forked('the consortium', load_keys)",
            "print('KEYS' if 'pipeline.secagg.keys' in sys.modules else 'NO-KEYS')",
        ]
    )

    # Execute
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "NO-KEYS"


def test_an_interrupted_driver_stops_the_child(tmp_path):
    # Prepare: a driver waiting for a child that would sleep for a minute
    pid_file = tmp_path / "child.pid"
    code = "\n".join(
        [
            "import os, signal, sys, time",
            "from pipeline.engines.forked import run_forked",
            # as pipeline.run does: a process started in the background inherits SIGINT ignored
            "signal.signal(signal.SIGINT, signal.default_int_handler)",
            "def nap(path):",
            "    open(path, 'w').write(str(os.getpid()))",
            "    time.sleep(60)",
            "try:",
            "    run_forked('nap', nap, sys.argv[1])",
            "except KeyboardInterrupt:",
            "    print('interrupted')",
        ]
    )
    driver = subprocess.Popen([sys.executable, "-c", code, str(pid_file)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())

    # Execute: Ctrl-C reaches the driver alone
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=30)

    # Assert: the driver saw the interrupt, and its child is gone
    assert "interrupted" in out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
