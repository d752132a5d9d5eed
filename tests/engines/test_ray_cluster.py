"""The simulation's Ray: started before the preflight, its workers hold the hospital's modules before
any message, it gets no more CPUs than the hospitals use, and a refused run leaves none of it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, compose_cfg

from pipeline.engines.deployment import processes_with_environment
from pipeline.engines.simulation import RUN_TAG, TELEMETRY_ENV, RayCluster, ray_cpus


@pytest.mark.parametrize(
    "hospitals, cpus_each, machine, expected",
    [(3, 1, 2, 2), (3, 1, 16, 3), (3, 0.5, 16, 2), (3, 1.5, 16, 5), (30, 1, 16, 16)],
)
def test_ray_gets_the_machines_cpus_but_no_more_than_the_hospitals_use_at_once(
    monkeypatch, hospitals, cpus_each, machine, expected
):
    import ray._private.utils

    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: machine)
    cfg = compose_cfg(
        f"federation.num_hospitals={hospitals}", f"federation.cpus_per_hospital={cpus_each}", validated=False
    )
    assert ray_cpus(cfg) == expected


def _uptime() -> float:
    """Seconds since boot (the clock of a process's start time in /proc)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _started(pid: int) -> float:
    """When process ``pid`` started, in seconds since boot."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


@pytest.mark.e2e
def test_each_ray_worker_holds_the_hospitals_modules_before_it_is_given_work_and_stop_ends_every_process():
    import ray

    telemetry_before = os.environ.get(TELEMETRY_ENV)
    cluster = RayCluster(num_cpus=1).start()
    tag = cluster.tag
    try:
        assert os.environ[RUN_TAG] == tag
        cluster.ready()

        @ray.remote(num_cpus=1)
        class Probe:
            def modules(self) -> tuple[float, list[str], int, str | None]:
                held = [m for m in ("torch", "opacus", "tenseal", "pipeline.flower.hospital") if m in sys.modules]
                return _started(os.getpid()), held, gc.get_freeze_count(), os.environ.get(TELEMETRY_ENV)

        asked = _uptime()
        started, held, frozen, telemetry = ray.get(Probe.remote().modules.remote(), timeout=120)
    finally:
        cluster.stop()
    assert held == ["torch", "opacus", "tenseal", "pipeline.flower.hospital"]
    # the imported libraries' objects are out of the collector's reach (pipeline.heap); no usage
    # report of the hospital's machine goes to Flower's servers
    assert frozen > 100_000 and telemetry == "0"
    assert started < asked, "the actor did not land on a worker Ray started (and preloaded) with itself"
    assert RUN_TAG not in os.environ and os.environ.get(TELEMETRY_ENV) == telemetry_before
    assert processes_with_environment(f"\0{RUN_TAG}={tag}\0") == []


@pytest.mark.e2e
def test_a_run_refused_after_ray_started_leaves_no_process_of_it(tmp_path):
    # the data folder is checked in the preflight, which runs while Ray starts
    tag = f"fedmed-test-{uuid.uuid4().hex}"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'none'}",
         f"federation.hospital_dir={tmp_path / 'h'}"],
        cwd=ROOT, env={**os.environ, "FEDMED_TEST_TAG": tag}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert processes_with_environment(tag) == []
