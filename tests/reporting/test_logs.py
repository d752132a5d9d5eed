"""The console's filter and levels, run.log's completeness, the hospitals' process setup, the live bar."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline.reporting import console, logs


def record(name: str, level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


LIBRARY_WARNING = record(
    "py.warnings", logging.WARNING, "%s", f"{ROOT}/.venv/lib/python3.11/site-packages/opacus/rdp.py:332: UserWarning: "
    "Optimal order is the largest alpha."
)  # fmt: skip
OUR_WARNING = record("py.warnings", logging.WARNING, "%s", f"{ROOT}/pipeline/task/data.py:10: UserWarning: ours")


@pytest.mark.parametrize(
    "level, rec, shown",
    [
        ("info", record("fedmed.server", logging.INFO, "round 1/2 | ..."), True),
        ("info", record("pipeline.flower.hospital", logging.WARNING, "hospital 0 refuses"), True),
        ("info", record("flwr", logging.DEBUG, "Pre-registering run"), False),
        ("info", record("flwr", logging.INFO, "a library's progress"), False),
        ("info", record("flwr", logging.WARNING, "DEPRECATED FEATURE: run_simulation"), False),
        ("info", record("flwr", logging.ERROR, "ClientApp raised an exception"), True),
        ("info", LIBRARY_WARNING, False),
        ("info", OUR_WARNING, True),
        ("warning", record("fedmed.server", logging.INFO, "round 1/2 | ..."), False),
        ("warning", record("fedmed", logging.WARNING, "stopping early"), True),
        ("warning", LIBRARY_WARNING, False),
        ("debug", record("flwr", logging.DEBUG, "Pre-registering run"), True),
        ("debug", LIBRARY_WARNING, True),
    ],
)
def test_the_console_shows_what_its_level_asks_for(level, rec, shown):
    assert logs.ConsoleFilter(level).filter(rec) is shown


@pytest.fixture
def root_logging(tmp_path):
    """The root logger as Hydra leaves it (a console and a run.log handler), restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    for h in saved[1]:
        root.removeHandler(h)
    file_handler = logging.FileHandler(tmp_path / "run.log")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(logging.StreamHandler(sys.stdout))
    root.addHandler(file_handler)
    yield tmp_path / "run.log"
    logging.captureWarnings(False)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(saved[0])
    for h in saved[1]:
        root.addHandler(h)


def test_run_log_keeps_the_library_lines_the_console_leaves_out(root_logging, capsys):
    logs.setup_logging("info")
    logging.getLogger("flwr").debug("Pre-registering run with id 1")
    logging.getLogger("fedmed").info("round 1/2 | 3 hospitals")
    logging.getLogger("fedmed").warning("a hospital was dropped")
    logging.getLogger("flwr").error("ClientApp raised an exception")
    logging.getLogger("matplotlib.font_manager").debug("findfont: score(FontEntry(...))")
    logs.mute_console()
    logging.getLogger("fedmed").info("during the shutdown")
    print("ray's shutdown chatter")
    logs.unmute_console()
    for h in logging.getLogger().handlers:
        h.flush()

    out = capsys.readouterr().out
    kept = root_logging.read_text()
    assert "round 1/2 | 3 hospitals" in out and "warning: a hospital was dropped" in out
    assert "error: [flwr] ClientApp raised an exception" in out
    assert "Pre-registering" not in out and "shutdown" not in out and len(out.splitlines()) == 3
    assert "[flwr][DEBUG] - Pre-registering run with id 1" in kept and "round 1/2" in kept
    assert "during the shutdown" in kept and "ray's shutdown chatter" in kept
    assert "findfont" not in kept  # a library's chatter that says nothing about the run


def test_a_hospital_process_silences_library_warnings_but_not_its_own_and_leaves_ctrl_c_to_the_driver():
    code = (
        "import signal, warnings\n"
        "from pipeline.reporting.logs import setup_hospital_process\n"
        "setup_hospital_process()\n"
        "warnings.warn_explicit('Secure RNG turned off', UserWarning, 'x.py', 1, module='opacus.privacy_engine')\n"
        "warnings.warn_explicit('our own warning', UserWarning, 'y.py', 1, module='pipeline.task.data')\n"
        "import logging; logging.basicConfig()\n"
        "logging.getLogger('flwr').warning('Manually terminating ClientAppActor')\n"
        "logging.getLogger('flwr').warning('a real Flower warning')\n"
        "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    loud = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, logs.LEVEL_ENV: "debug"},
    )  # fmt: skip

    assert quiet.stdout.strip() == "True"
    assert "Secure RNG" not in quiet.stderr and "our own warning" in quiet.stderr
    assert "Manually terminating" not in quiet.stderr and quiet.stderr.count("a real Flower warning") == 1
    assert "Secure RNG" in loud.stderr and "our own warning" in loud.stderr and "Manually terminating" in loud.stderr


def test_the_live_bar_estimates_the_time_left_from_the_rounds_finished(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    bar = console.LiveProgress(rounds=4)
    try:
        bar(1, "train", 0, 3)  # round 1 starts at 100: nothing finished yet
        task = bar.progress.tasks[0]
        assert task.description == "round 1/4 train" and task.fields["left"] == ""
        now[0] = 130.0
        bar(2, "train", 1, 3)  # one round took 30 s, 3 rounds to go
        assert task.fields["left"] == "~0:01:30 left" and (task.completed, task.total) == (1, 3)
        now[0] = 160.0
        bar(3, "evaluate", 2, 3)  # 30 s a round, 2 to go
        assert task.description == "round 3/4 evaluate" and task.fields["left"] == "~0:01:00 left"
        elapsed = [c for c in bar.progress.columns if type(c).__name__ == "RunElapsed"][0]
        assert str(elapsed.render(task)) == "0:01:00"  # since the bar started, across phases
    finally:
        console.close_live_progress()
    assert console._LIVE == []


def test_no_live_bar_off_a_terminal_or_below_info():
    assert console.live_progress("info", 3) is None  # pytest's stdout is not a terminal
    assert console.live_progress("warning", 3) is None
