"""DP-SGD overhead: samples per second of one local epoch with and without DP, same batch size.

    python scripts/bench_dp.py --data-root ../shared/data [--models cnn resnet18] [--batch-size 128]

Trains on the first ``--samples`` PneumoniaMNIST training images (one hospital's share), with
``train.threads`` torch threads, for each model and each Opacus per-sample-gradient mode, and
prints a Markdown table (paste it into docs/BENCHMARKS.md with the command line).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import validate
from pipeline.data import ImageDataset
from pipeline.hospital import build_model, splits
from pipeline.keys import CONF_DIR
from pipeline.privacy import PrivacyLedger, make_private, plan_dp
from pipeline.training import train_epochs


def epoch_seconds(cfg, mode: str | None, data, batch: int, repeats: int) -> float:
    """Best of ``repeats`` timings of one epoch (plain when ``mode`` is None)."""
    best = float("inf")
    for _ in range(repeats):
        model = build_model(cfg, 1, 2, 28)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if mode is None:
            loader = DataLoader(data, batch_size=batch, shuffle=True)
            crit: nn.Module = nn.CrossEntropyLoss()
        else:
            cfg.privacy.grad_sample_mode = mode
            plan = plan_dp(cfg.privacy, len(data), batch, 1, 1)
            private = make_private(model, opt, data, batch, plan, PrivacyLedger("rdp"), cfg.privacy)
            model, opt, crit, loader = private.model, private.optimizer, private.criterion, private.loader
        start = time.perf_counter()
        train_epochs(model, loader, opt, crit, 1, torch.device("cpu"))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--modes", nargs="+", default=["hooks", "ghost"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=1412, help="images per epoch (one hospital of three)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {a.threads} torch threads, torch {torch.__version__}"
    )
    print("| model | mode | batch | samples/s | seconds/epoch | x plain |\n|---|---|---|---|---|---|")
    for name in a.models:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = validate(compose("config", overrides=[f"model={name}", f"data.root={a.data_root}"]))
        s = splits(cfg)
        k = min(a.samples, len(s.train_y))
        data = ImageDataset(s.train_x[:k], s.train_y[:k], 0.5, 0.5)
        n = len(data)
        repeats = a.repeats if name == "cnn" else 1
        plain = epoch_seconds(cfg, None, data, a.batch_size, repeats)
        print(f"| {name} | plain | {a.batch_size} | {n / plain:.0f} | {plain:.2f} | 1.00 |", flush=True)
        for mode in a.modes:
            t = epoch_seconds(cfg, mode, data, a.batch_size, repeats)
            print(f"| {name} | DP {mode} | {a.batch_size} | {n / t:.0f} | {t:.2f} | {t / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
