"""The configured network and its weights as one flat vector (what the hospitals encode and add).

The initial weights are public and identical everywhere: seeded with the run's seed, or read from
``model.checkpoint`` (a warm start, e.g. weights pretrained on public data), so every hospital,
the server (plaintext mode) and the consortium build the same starting point. ``model.freeze``
names module prefixes whose parameters stay as they start (``requires_grad=False``: linear
probing, or fine-tuning the last layers only); they are left out of the flat vector, so only
what the hospitals train travels (and is encrypted).
"""

from __future__ import annotations

import inspect
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models.compat import dp_ready
from pipeline.errors import ConfigError
from pipeline.reporting.atomic import write_atomic

log = logging.getLogger(__name__)

# Keys of conf/model/ that are the pipeline's, not the builder's.
WARM_START_KEYS = ("checkpoint", "freeze")
# Names shown in a message about keys or modules.
SHOWN = 5
# The attribute :func:`freeze` leaves on a model: the state_dict names of its frozen parameters.
FROZEN_ATTR = "frozen_parameters"


def model_builder(cfg: DictConfig) -> Callable[..., nn.Module]:
    """The builder ``conf/model/`` names, bound to its own keys (the warm-start keys are the pipeline's).

    Call it with ``in_channels``, ``num_classes`` and ``image_size`` (and ``spatial_dims`` for 3D);
    :func:`build_model` does, then applies ``model.checkpoint`` and ``model.freeze``.
    """
    return instantiate(OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in WARM_START_KEYS]))


def build_model(cfg: DictConfig, channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The configured network with the run's public initial weights (seeded or ``model.checkpoint``).

    Its spatial dimensions follow ``data.spatial_dims`` (2 unless set). Parameters under
    ``model.freeze`` do not require gradients.

    Raises:
        ConfigError: a builder with no 3D form, an unreadable or mismatched checkpoint, or a
            freeze prefix that names no module.
    """
    torch.manual_seed(int(cfg.seed))
    builder = model_builder(cfg)
    kwargs = {"in_channels": channels, "num_classes": num_classes, "image_size": image_size}
    spatial_dims = int(cfg.data.get("spatial_dims") or 2)
    if spatial_dims != 2:
        if "spatial_dims" not in inspect.signature(builder).parameters:
            raise ConfigError(
                f"model={cfg.model._target_} has no 3D form; use model=cnn, resnet18 or densenet121 (volumes)"
            )
        kwargs["spatial_dims"] = spatial_dims
    model = builder(**kwargs)
    if cfg.privacy.enabled:
        model = dp_ready(model, str(cfg.privacy.batchnorm))
    if cfg.model.get("checkpoint"):
        load_checkpoint(model, Path(str(cfg.model.checkpoint)).expanduser())
    if cfg.model.get("freeze"):
        freeze(model, cfg.model.freeze)
    return model


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Start ``model`` from the ``state_dict`` at ``path``.

    Every tensor of the model must be in the checkpoint under the same name. Tensors whose shape
    differs (a head for another number of classes) keep their seeded values, with a warning.

    Raises:
        ConfigError: the file is missing or no state_dict, or its names do not match the model's.
    """
    if not path.is_file():
        raise ConfigError(f"model.checkpoint={path} not found; it must be a state_dict file (torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is no checkpoint
        raise ConfigError(f"model.checkpoint={path} is not a readable state_dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.checkpoint={path} is not a state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(
            f"model.checkpoint={path} does not fit model={type(model).__name__}: "
            f"{len(missing)} of its tensors missing ({', '.join(missing[:SHOWN])}), "
            f"{len(unexpected)} unknown ({', '.join(unexpected[:SHOWN])}); was it saved from this model?"
        )
    reshaped = [k for k in own if state[k].shape != own[k].shape]
    if len(reshaped) == len(own):
        raise ConfigError(f"model.checkpoint={path}: no tensor has the model's shape; was it saved from this model?")
    if reshaped:
        log.warning(
            "model.checkpoint: %d tensor(s) of another shape keep their seeded values: %s",
            len(reshaped),
            ", ".join(reshaped),
        )
    model.load_state_dict({k: (own[k] if k in reshaped else state[k].to(own[k].dtype)) for k in own})


def freeze(model: nn.Module, prefixes: str | Sequence[str]) -> list[str]:
    """Stop gradients of every parameter under one of the module name ``prefixes``; returns their names.

    The names are kept on the model (:data:`FROZEN_ATTR`): :func:`get_flat` leaves them out.

    Raises:
        ConfigError: a prefix that names no module, or one that leaves nothing to train.
    """
    prefixes = [str(prefixes)] if isinstance(prefixes, str) else [str(p) for p in prefixes]
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    for prefix in prefixes:
        under = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not under:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"model.freeze: {prefix!r} names no module of the model; its modules start with {', '.join(tops)}"
            )
        frozen += under
    params = dict(model.named_parameters())
    if len(set(frozen)) == len(params):
        raise ConfigError(f"model.freeze={prefixes} freezes every parameter: nothing would train")
    for name in frozen:
        params[name].requires_grad_(False)
    setattr(model, FROZEN_ATTR, frozenset(frozen))
    return sorted(set(frozen))


def _shared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state that travels: everything but the frozen parameters (public, the same everywhere, never changed)."""
    frozen = getattr(model, FROZEN_ATTR, frozenset())
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def get_flat(model: nn.Module) -> np.ndarray:
    """All floating-point state (parameters and buffers) but frozen parameters, as one float32 vector.

    Frozen parameters stay out so that they stay exactly as they started: the hospitals send
    (and encrypt) only what they train, and quantisation never moves what nobody changed.
    """
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in _shared_state(model).values()]).numpy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Load a vector made by :func:`get_flat` back into ``model`` (frozen parameters are kept)."""
    state, offset = _shared_state(model), 0
    for key, tensor in state.items():
        n = tensor.numel()
        state[key] = torch.from_numpy(np.asarray(flat[offset : offset + n])).reshape(tensor.shape).to(tensor.dtype)
        offset += n
    if offset != len(flat):
        raise ValueError(f"weight vector has {len(flat)} values, the model needs {offset}")
    model.load_state_dict(state, strict=False)


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s ``state_dict`` to ``path`` (``torch.load`` reads it back), atomically."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return write_atomic(path, buf.getvalue())
