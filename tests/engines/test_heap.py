"""pipeline.heap: the imported libraries' objects kept out of the garbage collector's passes."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from conftest import ROOT

from pipeline.heap import freeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_freeze_heap_frees_the_garbage_of_now_and_keeps_the_living_out_of_later_collections():
    garbage, alive = _Node(), _Node()
    dead = weakref.ref(garbage)
    del garbage
    try:
        freeze_heap()
        frozen = gc.get_freeze_count()
        assert dead() is None  # collected before the freeze, not frozen with the rest
        assert frozen > 0 and gc.is_tracked(alive)
        gc.collect()
        assert gc.get_freeze_count() == frozen  # a full collection leaves the frozen objects alone
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_quick_exit_freezes_the_heap_when_the_process_exits_and_every_exit_handler_still_runs():
    # an atexit handler registered before quick_exit runs after it (last registered, first run)
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
        "from pipeline.heap import quick_exit\n"
        "quick_exit(); quick_exit()\n"
        "print('before exit:', gc.get_freeze_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["before exit: 0", "frozen at exit: True"]
