"""The configured network and its weights as one flat vector (what the hospitals encode and add).

The initial weights are seeded with the run's seed, so every hospital, the server (plaintext mode)
and the consortium build the same public starting point.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from models.compat import dp_ready
from pipeline.outputs.atomic import write_atomic


def build_model(cfg: DictConfig, channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The configured network with the run's public initial weights (seeded: identical everywhere)."""
    torch.manual_seed(int(cfg.seed))
    model = instantiate(cfg.model)(in_channels=channels, num_classes=num_classes, image_size=image_size)
    if cfg.privacy.enabled:
        model = dp_ready(model, str(cfg.privacy.batchnorm))
    return model


def get_flat(model: nn.Module) -> np.ndarray:
    """All floating-point state (parameters and buffers) as one float32 vector."""
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in model.state_dict().values()]).numpy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Load a vector made by :func:`get_flat` back into ``model``."""
    state, offset = model.state_dict(), 0
    for key, tensor in state.items():
        n = tensor.numel()
        state[key] = torch.from_numpy(np.asarray(flat[offset : offset + n])).reshape(tensor.shape).to(tensor.dtype)
        offset += n
    if offset != len(flat):
        raise ValueError(f"weight vector has {len(flat)} values, the model needs {offset}")
    model.load_state_dict(state)


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s ``state_dict`` to ``path`` (``torch.load`` reads it back), atomically."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return write_atomic(path, buf.getvalue())
