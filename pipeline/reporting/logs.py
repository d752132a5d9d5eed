"""What reaches the console and what only the run folder's ``run.log`` keeps.

Hydra configures the job's logging (a console handler and the ``run.log`` file handler in the run
folder); :func:`setup_logging` then keeps ``run.log`` at DEBUG, libraries included, and gives the
console only what ``log.level`` asks for:

- ``warning``: warnings and errors (the final table is printed, not logged);
- ``info``: also our own progress lines (the ``fedmed`` loggers);
- ``debug``: also the libraries' own lines (Flower, Ray, Opacus, Python warnings).

Known library noise (Flower's deprecation notice, Python warnings raised inside third-party
packages such as Opacus' "Optimal order is the largest alpha") goes to ``run.log`` only, below
``debug``. The simulated hospitals are Ray workers: :func:`hospital_runtime_env` makes each of them
run :func:`setup_hospital_process` at start, which silences the same library warnings there (their
own ``fedmed`` warnings and errors still reach the console) and leaves Ctrl-C to the driver.

While an interrupted run shuts down, :func:`mute_console` sends whatever is printed (Ray's
shutdown chatter) to ``run.log`` instead; :func:`unmute_console` restores the console for the one
line that says what was saved.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
LEVEL_ENV = "FEDMED_LOG_LEVEL"  # the console level, as the hospitals' processes see it
OURS = "fedmed"  # our loggers: fedmed, fedmed.server, ...
OUR_PACKAGES = ("pipeline.", "strategies.", "models.", "scripts.")  # modules logging under their own __name__
# library log lines kept out of the console below debug (the driver's and the hospitals')
LIBRARY_NOISE = ("DEPRECATED FEATURE", "Manually terminating ClientAppActor")
# Python warnings raised inside these packages stay out of the console below debug
LIBRARY_WARNINGS = ("opacus", "ray", "flwr", "torch", "monai", "tenseal", "mlflow", "alembic")
_REPO = str(Path(__file__).resolve().parents[2])
_muted: dict[str, Any] = {}


def is_ours(record: logging.LogRecord) -> bool:
    """True for a record of our own code (the ``fedmed`` loggers or a module of this repository)."""
    name = record.name
    return name == OURS or name.startswith(OURS + ".") or name.startswith(OUR_PACKAGES)


def library_python_warning(record: logging.LogRecord) -> bool:
    """True for a Python warning (``py.warnings``) raised in a third-party file, not in this repository."""
    if record.name != "py.warnings":
        return False
    where = str(record.args[0] if record.args else record.msg).split(":", 1)[0]
    return not where.startswith(_REPO) or "site-packages" in where


def library_noise(record: logging.LogRecord) -> bool:
    """True for a known, harmless library line (:data:`LIBRARY_NOISE`)."""
    message = record.getMessage()
    return any(s in message for s in LIBRARY_NOISE)


class ConsoleFilter(logging.Filter):
    """Lets through what the console shows at ``level`` (warning | info | debug); run.log gets everything."""

    def __init__(self, level: str) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if _muted:
            return False
        if self.level == "debug":
            return True
        if library_python_warning(record) or library_noise(record):
            return False
        if record.levelno >= logging.WARNING:
            return True
        return self.level == "info" and record.levelno >= logging.INFO and is_ours(record)


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (so a live progress bar can print above itself)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D102
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # the stream is always the current sys.stdout
        pass


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings (and libraries' errors) name their level, a library's lines its logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        head, _, rest = super().format(record).partition(" ")
        if not is_ours(record):
            rest = f"[{record.name}] {rest}"
        if record.levelno >= logging.WARNING and not (is_ours(record) and record.levelno >= logging.ERROR):
            rest = f"{record.levelname.lower()}: {rest}"  # our errors name themselves (error:, run failed:, ...)
        return f"{head} {rest}"


# Libraries whose DEBUG lines say nothing about the run: kept out of run.log too.
CHATTY = ("matplotlib", "PIL")


def setup_logging(level: str) -> None:
    """Console at ``level`` (warning | info | debug), every file handler (Hydra's run.log) at DEBUG."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.DEBUG)
        elif isinstance(handler, logging.StreamHandler) and not isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)  # Hydra's console handler: replaced below
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    console = ConsoleHandler()
    console.setFormatter(ConsoleFormatter())
    console.addFilter(ConsoleFilter(level))
    root.addHandler(console)
    for name in CHATTY:  # their DEBUG lines (font lookups, PNG chunks) would bury run.log's useful ones
        logging.getLogger(name).setLevel(logging.INFO)
    _quiet_flower()
    os.environ[LEVEL_ENV] = level


def _quiet_flower() -> None:
    """Flower prints through its own console handler too; its lines reach run.log (and the console) via root."""
    from flwr.common.logger import FLOWER_LOGGER, console_handler

    FLOWER_LOGGER.removeHandler(console_handler)
    FLOWER_LOGGER.propagate = True


def setup_hospital_process() -> None:
    """Run by every Ray worker at start (:mod:`pipeline.engines.ray_worker`): library noise silenced
    (below debug); Ctrl-C is the driver's.

    Below debug, Python warnings raised in the libraries and Flower's known lines
    (:data:`LIBRARY_NOISE`) are dropped and Flower's own console handler (a duplicate of each of its
    lines) removed. The hospitals' own log lines (warnings, refusals, errors) are untouched. SIGINT
    is ignored because a terminal's Ctrl-C reaches the whole process group: the driver stops the
    workers itself.
    """
    if os.environ.get(LEVEL_ENV, "info") != "debug":
        for package in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", module=rf"{package}(\.|$)")
        _quiet_flower()
        logging.getLogger("flwr").addFilter(lambda record: not library_noise(record))
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _ToRunLog:
    """A stand-in for sys.stdout/sys.stderr while muted: writes go to the run.log file handlers only."""

    def __init__(self, handlers: list[logging.FileHandler]) -> None:
        self.handlers = handlers

    def write(self, text: str) -> int:
        for h in self.handlers:
            with h.lock:
                if h.stream is not None:
                    h.stream.write(text)
        return len(text)

    def flush(self) -> None:
        for h in self.handlers:
            h.flush()

    def isatty(self) -> bool:
        return False


def mute_console() -> None:
    """Until :func:`unmute_console`: nothing reaches the console; prints and log records go to run.log."""
    if _muted:
        return
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    _muted.update(stdout=sys.stdout, stderr=sys.stderr)
    sys.stdout = sys.stderr = _ToRunLog(files)


def unmute_console() -> None:
    """The console back as it was before :func:`mute_console`."""
    if _muted:
        sys.stdout, sys.stderr = _muted.pop("stdout"), _muted.pop("stderr")
