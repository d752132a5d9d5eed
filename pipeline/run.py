"""Entry point: ``python -m pipeline.run [overrides]`` (or ``fedmed-run``), one run per Hydra job.

Checks the whole config and the data before starting anything (a bad value stops the run with
one line naming it), then runs the federated simulation or a baseline, and writes everything to
the run folder: config.yaml, metrics.csv, summary.json, curves.png, model.pt.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.config import conf_dir, validate
from pipeline.config import paths as _paths  # noqa: F401  (registers the config's resolvers)
from pipeline.config.resume import resume_config
from pipeline.errors import ConfigError, DataError, RunFailed
from pipeline.outputs.atomic import write_atomic
from pipeline.outputs.console import summary_table
from pipeline.outputs.recorder import CONFIG_FILE

log = logging.getLogger("fedmed")


def _terminate(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def preflight(cfg: DictConfig) -> None:
    """Load the data, partition it, build the model and plan each hospital's DP budget: fail fast."""
    from pipeline.privacy.plan import plan_for_run
    from pipeline.task.model import build_model
    from pipeline.task.sites import hospital_data, pooled_data, test_dataset

    if cfg.strategy.get("proximal_mu", 0) and cfg.privacy.enabled:
        raise ConfigError("strategy.proximal_mu > 0 (FedProx) is not supported with privacy=dpsgd; use strategy=fedavg")
    test_dataset(cfg)
    rounds = int(cfg.federation.rounds)
    sites = (
        [pooled_data(cfg)]
        if cfg.federation.mode == "centralized"
        else [hospital_data(cfg, h) for h in range(int(cfg.federation.num_hospitals))]
    )
    first = sites[0]
    build_model(cfg, first.channels, first.num_classes, first.image_size)
    for i, site in enumerate(sites):
        plan = plan_for_run(cfg, site.num_train)
        if plan is not None and i == 0:
            log.info(
                "DP-SGD plan: noise multiplier %.3f, sample rate %.4f, %d steps over %d rounds, "
                "target epsilon %g, delta %g",
                plan.noise_multiplier,
                plan.sample_rate,
                plan.total_steps,
                rounds,
                plan.target_epsilon,
                plan.delta,
            )


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate, check, run; return the summary. Raises ConfigError / DataError / RunFailed."""
    cfg = validate(cfg)
    if not cfg.get("study_id"):
        cfg.study_id = new_study_id()
    if cfg.privacy.enabled and cfg.privacy.reproducible:
        log.warning(
            "privacy.reproducible=true: the DP batches and noise follow the config's seed, so anyone with the "
            'config can recompute them; this run is NOT private (summary.json: "private": false)'
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
    preflight(cfg)
    if cfg.federation.mode == "federated" and cfg.get("deployment") is not None:
        from pipeline.engines.deployment import run_local_deployment

        summary = run_local_deployment(cfg, run_dir)
    elif cfg.federation.mode == "federated":
        from pipeline.engines.simulation import run_federated

        summary = run_federated(cfg, run_dir)
    else:
        from pipeline.engines.baselines import run_baseline

        summary = run_baseline(cfg, run_dir)
    return record_provenance(cfg, run_dir, summary)


def new_study_id() -> str:
    """A fresh study id: the date and random hex (hospitals' lifetime ledgers list studies by it)."""
    return f"study-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def record_provenance(cfg: DictConfig, run_dir: Path, summary: dict) -> dict:
    """Add versions, git commit, machine and data fingerprint to summary.json (honest comparisons)."""
    from pipeline.outputs import provenance
    from pipeline.outputs.recorder import SUMMARY_FILE, write_json
    from pipeline.outputs.tracking import log_run

    summary["provenance"] = provenance.collect(cfg)
    write_json(run_dir / SUMMARY_FILE, summary)

    log_run(cfg, run_dir, summary)
    return summary


def quiet_libraries() -> None:
    """Keep the console to progress lines: libraries' debug chatter goes."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.INFO)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_libraries()
    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends like Ctrl-C: checkpoints stay intact
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
    try:
        if cfg.resume:
            cfg = resume_config(cfg, list(HydraConfig.get().overrides.task))
        run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
        summary = execute(cfg, run_dir)
    except (ConfigError, DataError) as err:
        log.error("error: %s", err)
        sys.exit(2)
    except RunFailed as err:
        log.error("run failed: %s", err)
        sys.exit(1)
    except KeyboardInterrupt:
        if cfg.get("deployment") is not None:
            log.error("interrupted: every deployment process was stopped; a deployment restarts from round 1")
        else:
            log.error(
                "interrupted: completed rounds are saved; continue with: python -m pipeline.run resume=%s", run_dir
            )
        sys.exit(130)
    print(summary_table(summary), flush=True)
    if summary.get("status") == "stopped_early":
        log.warning("the run stopped early: %s", summary.get("stop_reason"))


def main() -> None:
    """Console-script entry point (``fedmed-run``)."""
    hydra_main()


if __name__ == "__main__":
    main()
