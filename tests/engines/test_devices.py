"""Devices: ``device=cuda`` refused at start without CUDA; ``gpus_per_hospital=auto`` shares the GPUs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import DATA_ROOT, ROOT, compose_cfg

from pipeline.engines.simulation import backend_config, gpu_share
from pipeline.errors import ConfigError
from pipeline.run import check_device


def gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(
    "count, hospitals, device, share",
    [
        (0, 3, "auto", 0.0),  # no CUDA: the CPU
        (1, 3, "auto", 0.3333),  # a third of the one GPU each, all three fit at once
        (1, 2, "cuda", 0.5),
        (2, 3, "auto", 0.6666),
        (4, 2, "cuda:0", 2.0),  # whole GPUs when there are enough
        (5, 2, "auto", 2.0),
        (1, 3, "cpu", 0.0),  # the config asks for the CPU
    ],
)
def test_auto_gives_each_hospital_a_share_of_the_visible_gpus(monkeypatch, count, hospitals, device, share):
    gpus(monkeypatch, count)
    cfg = compose_cfg(f"federation.num_hospitals={hospitals}", f"device={device}", validated=False)

    assert gpu_share(cfg) == pytest.approx(share)
    assert backend_config(cfg)["client_resources"]["num_gpus"] == pytest.approx(share)
    assert gpu_share(cfg) * hospitals <= max(count, 0) + 1e-9


def test_a_number_is_taken_as_it_is_and_a_bad_one_refused(monkeypatch):
    gpus(monkeypatch, 0)
    assert gpu_share(compose_cfg("federation.gpus_per_hospital=0.25", validated=False)) == 0.25
    assert compose_cfg().federation.gpus_per_hospital == "auto"
    with pytest.raises(ConfigError, match="federation.gpus_per_hospital='many' must be auto or a number >= 0"):
        compose_cfg("federation.gpus_per_hospital=many")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused(monkeypatch, device):
    gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match=f"device={device}: CUDA is not available"):
        check_device(compose_cfg(f"device={device}"))


def test_a_gpu_that_is_not_there_is_refused_and_cpu_or_auto_pass(monkeypatch):
    gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match="device=cuda:1: this machine has 1 GPU"):
        check_device(compose_cfg("device=cuda:1"))
    for ok in ("cuda", "cuda:0", "cpu", "auto"):
        check_device(compose_cfg(f"device={ok}"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_the_command_refuses_cuda_at_start_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"run_dir={tmp_path / 'run'}", f"data.root={DATA_ROOT}", "device=cuda"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output
    assert [line for line in output.splitlines() if "CUDA" in line] == [
        next(line for line in output.splitlines() if "device=cuda: CUDA is not available" in line)
    ]
    assert "ray" not in output.lower()  # refused before the simulation started
