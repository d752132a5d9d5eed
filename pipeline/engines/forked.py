"""Running a step in a child process forked from the driver: a separate process that starts warm.

The consortium's test must not run in the server's process (the server never holds the secret
key), but a fresh ``python -m`` process spends most of its time importing MONAI and torch again
(about 8 of its 12 s). A child forked from the driver after the rounds has them already: it is a
separate process all the same, and what it loads (the key module, the secret context) never
reaches the parent. The child's signals are the default ones (Ctrl-C in the terminal stops it);
when the parent is interrupted or fails while waiting, it kills the child, as ``subprocess.run``
does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable

from pipeline.errors import RunFailed


def run_forked(step: str, target: Callable[..., object], *args: object) -> None:
    """``target(*args)`` in a forked child; RunFailed naming ``step`` and the child's error if it fails.

    ``target`` should import what it needs itself, so that the parent never imports it.
    """
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        try:
            target(*args)
        except BaseException as err:  # the parent reports it; no traceback on the user's console
            why = str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"
            writer.send((why.splitlines() or [""])[0])
            os._exit(1)
        writer.send("")

    process = context.Process(target=child, name=step, daemon=True)
    process.start()
    writer.close()
    try:
        process.join()
    except BaseException:
        process.kill()
        process.join()
        raise
    try:
        reason = reader.recv() if reader.poll() else ""
    except EOFError:  # the child died before it could say why
        reason = ""
    reader.close()
    if process.exitcode != 0:
        raise RunFailed(f"{step} failed: {reason or f'its process ended with exit code {process.exitcode}'}")
