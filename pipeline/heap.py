"""Python's cyclic garbage collector and the millions of objects torch, MONAI, Opacus and Ray import.

Importing the hospital's libraries leaves about 600 000 long-lived objects on the heap. Every full
collection walks all of them (0.2 s each on a 2-core machine, about nine a run in the driver), and
so does the interpreter's last collection at exit (about 3 s in every process that imported them:
the driver, each Ray worker, each hospital service, each command). Freezing them (``gc.freeze``,
what CPython offers for exactly this) moves them to a generation the collector never visits; they
are still freed by reference counting when the process drops them, only a reference cycle among
them would outlive its use. Measured in docs/BENCHMARKS.md ("the garbage collector").
"""

from __future__ import annotations

import atexit
import gc


def freeze_heap() -> None:
    """Collect what is garbage now, then keep every surviving object out of later collections.

    Called once a process has imported what it needs (the driver after its preflight, a Ray worker
    after its preload, a hospital service after its imports, before any message). In a process
    that calls :func:`pipeline.run.execute` itself (a test, a notebook), its own objects of the
    moment are frozen too.
    """
    gc.collect()
    gc.freeze()


def quick_exit() -> None:
    """Skip the interpreter's final walk of the heap at exit: freeze it when ``atexit`` runs.

    Every ``atexit`` handler still runs (logging's flush, Ray's shutdown, MLflow's end of run); only
    the last collection, which frees nothing the operating system would not, is skipped.
    """
    atexit.unregister(gc.freeze)  # registered once, however often this is called
    atexit.register(gc.freeze)
