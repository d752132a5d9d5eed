"""What a hospital agrees to run: the ``_target_``s a config from the server may name.

A hospital builds its model, optimizer, data partitioner and augmentation from the run config,
which comes from the server; ``hydra.utils.instantiate`` would call anything it names (``os.system``
included, or one of this project's own file writers). Hospitals therefore check every ``_target_``
against an allow-list of the model builders and the library classes the pipeline builds from,
and refuse the config with one line naming the first target outside it. They also refuse any
interpolation (``${...}``): the config the run starts with is resolved before it is sent, and an
interpolation would be resolved at the hospital, where ``${oc.env:NAME}`` reads its environment
into values that error messages could carry back.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

ALLOWED_TARGETS = (
    "models.",
    "strategies.",
    "torch.optim.",
    "monai.networks.nets.",
    "monai.transforms.Rand",  # augmentation is random transforms only; others (SaveImage...) could write files
    "flwr_datasets.partitioner.",
)


def untrusted_targets(cfg: DictConfig | dict[str, Any]) -> list[tuple[str, str]]:
    """Every (dotted key, value) of ``cfg`` that a hospital refuses: a ``_target_`` outside
    :data:`ALLOWED_TARGETS`, or a string holding an interpolation ``${...}``."""
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    found: list[tuple[str, str]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not str(target).startswith(ALLOWED_TARGETS):
                found.append((f"{where}._target_" if where else "_target_", str(target)))
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and "${" in node:
            found.append((where, node))

    walk(tree, "")
    return found


def check_targets(cfg: DictConfig, who: str = "this hospital") -> None:
    """Refuse ``cfg`` (ConfigError) if it names a ``_target_`` outside the allow-list or holds an interpolation."""
    bad = untrusted_targets(cfg)
    if bad:
        key, value = bad[0]
        why = (
            "is an interpolation, which the resolved config a run sends never holds"
            if "${" in value
            else f"is not in its allow-list ({', '.join(ALLOWED_TARGETS)})"
        )
        raise ConfigError(f"{who} refuses the run config: {key}={value!r} {why}")
