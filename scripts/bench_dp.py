"""DP-SGD overhead: samples per second of one local epoch with and without DP, same batch size.

    python scripts/bench_dp.py --data-root ../shared/data [--models cnn resnet18] [--modes hooks ghost bk]
        [--batch-size 128] [--threads 1] [--augment] [--randomness secure unpredictable]

Trains on the first ``--samples`` PneumoniaMNIST training images (one hospital's share), with
``--threads`` torch threads (default: the pipeline's ``train.threads``), optionally with the
pipeline's data augmentation, for each model and each per-sample clipping mode (Opacus's, or
``bk``: pipeline/privacy/bk_clipping.py), and prints a Markdown table (paste it into docs/BENCHMARKS.md
with the command line).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import compose
from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_dp
from pipeline.privacy.randomness import KINDS, UNPREDICTABLE, mechanism_randomness
from pipeline.task.data import ImageDataset
from pipeline.task.model import build_model
from pipeline.task.sites import splits
from pipeline.task.training import train_epochs


def epoch_seconds(cfg, mode: str | None, data, batch: int, randomness: str = UNPREDICTABLE) -> float:
    """Seconds of one epoch on a fresh model (plain when ``mode`` is None), noise and batches from ``randomness``."""
    model = build_model(cfg, 1, 2, 28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode is None:
        loader = DataLoader(data, batch_size=batch, shuffle=True)
        crit: nn.Module = nn.CrossEntropyLoss()
    else:
        cfg.privacy.grad_sample_mode = mode
        plan = plan_dp(cfg.privacy, len(data), batch, 1, 1)
        source = mechanism_randomness(randomness, 0, 0, 0)
        private = make_private(model, opt, data, batch, plan, PrivacyLedger(plan.accountant), cfg.privacy, source)
        model, opt, crit, loader = private.model, private.optimizer, private.criterion, private.loader
    start = time.perf_counter()
    train_epochs(model, loader, opt, crit, 1, torch.device("cpu"))
    return time.perf_counter() - start


def _config(model: str, data_root: str):
    return compose(f"model={model}", f"data.root={data_root}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--modes", nargs="+", default=["hooks", "ghost"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=1412, help="images per epoch (one hospital of three)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: train.threads, as the pipeline)")
    p.add_argument("--augment", action="store_true", help="random affine augmentation, as data.augment=true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--randomness",
        nargs="+",
        default=[UNPREDICTABLE],
        choices=KINDS,
        help="where the DP batches and noise come from; 'secure' is privacy.secure_mode=true",
    )
    a = p.parse_args()
    threads = int(_config("cnn", a.data_root).train.threads) if a.threads is None else a.threads
    torch.set_num_threads(threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} torch threads, "
        f"torch {torch.__version__}, augmentation {'on' if a.augment else 'off'}"
    )
    print("| model | mode | randomness | batch | samples/s | seconds/epoch | x plain |\n|---|---|---|---|---|---|---|")
    for name in a.models:
        cfg = _config(name, a.data_root)
        s = splits(cfg)
        k = min(a.samples, len(s.train_y))
        data = ImageDataset(s.train_x[:k], s.train_y[:k], 0.5, 0.5, augment=a.augment)
        n = len(data)
        repeats = a.repeats if name == "cnn" else 1
        cases: list[tuple[str | None, str]] = [(None, "-")] + [(m, r) for m in a.modes for r in a.randomness]
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(repeats):  # round-robin, so that every case sees the same background load
            for mode, randomness in cases:
                seconds = epoch_seconds(cfg, mode, data, a.batch_size, randomness if mode else UNPREDICTABLE)
                best[(mode, randomness)] = min(best[(mode, randomness)], seconds)
        plain = best[(None, "-")]
        for (mode, randomness), t in best.items():
            label = "plain" if mode is None else f"DP {mode}"
            row = f"| {name} | {label} | {randomness} | {a.batch_size} | {n / t:.0f} | {t:.2f} | {t / plain:.2f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
