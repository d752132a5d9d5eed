"""Run folders for the inference tests: a config.yaml and a model.pt, as a finished run leaves them.

The weights are the seeded initial ones or (``train_epochs``) briefly trained in the clear on real
PneumoniaMNIST images, so that the logits have the size a trained model's have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import DATA_ROOT, compose_cfg
from omegaconf import OmegaConf

from pipeline.outputs.recorder import CONFIG_FILE, MODEL_FILE
from pipeline.task.data import ImageDataset, load_splits
from pipeline.task.model import build_model, save_model

# A small he_cnn: one filter, 4 hidden units (cheap to evaluate under CKKS in the tests).
TINY = ["model.conv_channels=1", "model.hidden=4"]


def make_run(run_dir: Path, *overrides: str, train_epochs: int = 0) -> Path:
    """A run folder for ``overrides`` (default: model=he_cnn on PneumoniaMNIST) with its final model."""
    cfg = compose_cfg("model=he_cnn", f"data.root={DATA_ROOT}", f"run_dir={run_dir}", *overrides)
    model = build_model(cfg, 1, 2, 28)
    if train_epochs:
        s = load_splits(cfg.data, int(cfg.seed))
        keep = np.random.default_rng(0).permutation(len(s.train_y))[:1000]
        data = ImageDataset(s.train_x[keep], s.train_y[keep], float(cfg.data.mean), float(cfg.data.std))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(train_epochs):
            for i in range(0, len(data), 100):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(data.x[i : i + 100]), data.y[i : i + 100]).backward()
                opt.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    save_model(model.eval(), run_dir / MODEL_FILE)
    return run_dir
