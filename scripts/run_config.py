"""Write the ``flwr run --run-config`` file of an experiment, for a deployment across real sites.

    python scripts/run_config.py --out run.toml --run-dir /srv/fedmed/runs/study1 \
        --public-context /srv/fedmed/keys/server_public.ctx [Hydra overrides]
    flwr run . my-superlink --run-config run.toml

The file carries the whole resolved Hydra config (the same one a simulation of these overrides
gets), the run folder and the server's parameters-only CKKS context; both paths are on the
machine where the SuperLink runs the ServerApp.
"""

import argparse
import sys
from pathlib import Path

from pipeline.config import compose
from pipeline.config.suggest import exit_on_unknown_override
from pipeline.engines.run_config import run_config_toml
from pipeline.errors import ConfigError
from pipeline.reporting.atomic import write_atomic
from pipeline.run import new_study_id


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the TOML file to write")
    p.add_argument("--run-dir", required=True, help="run folder on the SuperLink's machine")
    p.add_argument("--public-context", default=None, help="server_public.ctx on the SuperLink's machine")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m pipeline.run")
    a = p.parse_args()
    exit_on_unknown_override(a.overrides)
    try:
        cfg = compose(*a.overrides)
        if not cfg.get("study_id"):
            cfg.study_id = new_study_id()
        if cfg.encryption.enabled and not a.public_context:
            raise ConfigError("encryption is on: give --public-context (server_public.ctx from scripts/keygen.py)")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    public = Path(a.public_context) if a.public_context else None
    write_atomic(Path(a.out), run_config_toml(cfg, Path(a.run_dir), public))
    print(f"wrote {a.out}: flwr run . <superlink> --run-config {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
