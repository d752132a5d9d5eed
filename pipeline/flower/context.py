"""What the Flower apps read from their context: the experiment, the hospital id, key files.

The resolved Hydra config travels as one YAML string in the run config (``experiment-yaml``), so
that the same ServerApp and ClientApp run under the simulation engine and under ``flwr run`` on
the Deployment Engine. Site-specific settings (which hospital, where its key and state live)
come from the SuperNode's ``--node-config`` (``data-root`` makes the hospital read its own data
instead of a share of the experiment's data set); a simulation binds them when it builds the apps
(:func:`with_defaults`), because the simulation engine starts every run with an empty run config.
"""

from __future__ import annotations

import functools

from flwr.app import Context
from omegaconf import DictConfig, OmegaConf

EXPERIMENT_KEY = "experiment-yaml"
PUBLIC_CONTEXT_KEY = "public-context"
RUN_DIR_KEY = "run-dir"

# Node config keys (flower-supernode --node-config).
PARTITION_KEY = "partition-id"
SECRET_CONTEXT_KEY = "secret-context"
STATE_DIR_KEY = "state-dir"
DATA_ROOT_KEY = "data-root"
LIFETIME_DIR_KEY = "lifetime-dir"  # where the hospital's lifetime ledger lives (default: state-dir)
MAX_LIFETIME_KEY = "max-lifetime-epsilon"  # the hospital's own cap on its spending over all studies
SIGNING_KEY_KEY = "signing-key"  # the hospital's signing key (a SuperNode's node_key)
SIGNING_DIR_KEY = "signing-dir"  # or a folder of signing keys hospital_<id>.key (simulation)
ROSTER_KEY = "roster"  # the trusted roster of every hospital's public signing key (JSON)
SERVICE_KEY = "hospital-service"  # the hospital's long-running service (a Unix socket; see hospital_service)


@functools.lru_cache(maxsize=8)
def _parse(text: str) -> DictConfig:
    return OmegaConf.create(text)


def experiment(context: Context) -> DictConfig:
    """The resolved experiment config this run was started with."""
    text = str(context.run_config.get(EXPERIMENT_KEY, ""))
    if not text:
        raise ValueError(f"run config has no {EXPERIMENT_KEY!r}: start runs with `python -m pipeline.run`")
    return _parse(text)


def own_data_root(context: Context) -> str | None:
    """A real hospital's own data folder (node config ``data-root``); None in a simulation."""
    return str(context.node_config.get(DATA_ROOT_KEY) or "") or None


def with_defaults(context: Context, run_config: dict | None, node_config: dict | None) -> Context:
    """A view of ``context`` whose run and node config gain the keys they lack (set values win).

    The node state is the same object, so what a handler stores there persists.
    """

    def merged(base: dict, extra: dict | None) -> dict:
        out = dict(extra or {})
        out.update({k: v for k, v in base.items() if v not in (None, "")})
        return out

    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=merged(context.node_config, node_config),
        state=context.state,
        run_config=merged(context.run_config, run_config),
    )


def hospital_id(context: Context) -> int:
    """0-based hospital index: the SuperNode's partition id."""
    return int(context.node_config[PARTITION_KEY])
