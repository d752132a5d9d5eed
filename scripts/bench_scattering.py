"""The ScatterNet's forward pass, ours against kymatio's own: equal output, and the time it saves.

    python scripts/bench_scattering.py --data-root ../shared/data [--reps 3]

Alternates the two, ``--reps`` times, on one torch thread (a simulated hospital's ``train.threads``):
the forward pass of a 118-image batch (the default run's mean Poisson batch), then hospital 0's
whole local training of one round of the default run (DP-SGD, 2 epochs) with the model's
scattering layer swapped. Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from torch import nn

from models.scattering import Scattering
from pipeline.config import compose
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.privacy.randomness import round_randomness
from pipeline.task import training
from pipeline.task.model import build_model
from pipeline.task.sites import hospital_data


class KymatioScattering(nn.Module):
    """kymatio's own forward pass, shaped as :class:`models.scattering.Scattering`'s output."""

    def __init__(self, layer: Scattering, image_size: int, J: int, L: int) -> None:  # noqa: N803
        super().__init__()
        self.reference = ScatteringTorch2D(J=J, shape=(image_size, image_size), L=L)
        self.shape = (layer.out_channels, layer.out_size, layer.out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x.contiguous()).reshape(len(x), *self.shape)


def _seconds(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    cfg = compose(f"data.root={a.data_root}")
    torch.set_num_threads(int(cfg.train.threads))
    data = hospital_data(cfg, 0)
    plan = plan_for_run(cfg, data.num_train)
    device = training.resolve_device("cpu")
    J, L = int(cfg.model.J), int(cfg.model.L)  # noqa: N806

    ours = Scattering(data.channels, data.image_size, J, L)
    theirs = KymatioScattering(ours, data.image_size, J, L)
    batch = torch.rand(118, data.channels, data.image_size, data.image_size)
    gap = (ours(batch) - theirs(batch)).abs().max().item()

    def train(kymatio: bool) -> float:
        model = build_model(cfg, data.channels, data.num_classes, data.image_size)
        if kymatio:
            model[0] = KymatioScattering(model[0], data.image_size, J, L)
        ledger = PrivacyLedger.from_json(None, str(cfg.privacy.accountant)) if plan else None
        randomness = round_randomness(cfg.privacy, int(cfg.seed), 0, 1, 0)
        epochs = int(cfg.train.local_epochs)
        start = time.perf_counter()
        training.train_round(cfg, model, data.train, epochs, device, plan, ledger, 1, 0.0, randomness)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {k: [] for k in ("fwd kymatio", "fwd ours", "train kymatio", "train ours")}
    for rep in range(a.reps):
        times["fwd kymatio"].append(_seconds(lambda: theirs(batch), 5))
        times["fwd ours"].append(_seconds(lambda: ours(batch), 5))
        times["train kymatio"].append(train(True))
        times["train ours"].append(train(False))
        print(f"rep {rep + 1}/{a.reps}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)

    print(f"\nlargest |ours - kymatio| on a batch: {gap:.2e}\n")
    print("| measured (1 thread) | kymatio's forward | ours | ratio |\n|---|---|---|---|")
    for what, label in (("fwd", "forward pass, 118 images (s)"), ("train", "hospital 0's training of a round (s)")):
        k, o = statistics.median(times[f"{what} kymatio"]), statistics.median(times[f"{what} ours"])
        print(f"| {label} | {k:.3f} | {o:.3f} | {k / o:.2f}x |")


if __name__ == "__main__":
    main()
