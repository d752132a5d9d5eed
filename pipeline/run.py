"""Entry point: ``python -m pipeline.run [overrides]`` (or ``fedmed-run``), one run per Hydra job.

Checks the whole config and the data before starting anything (a bad value stops the run with
one line naming it), then runs the federated simulation or a baseline, and writes everything to
the run folder: config.yaml, metrics.csv, summary.json, curves.png, model.pt.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.config import validate
from pipeline.errors import ConfigError, DataError, RunFailed
from pipeline.results import summary_table

log = logging.getLogger("fedmed")


def preflight(cfg: DictConfig) -> None:
    """Load the data, partition it, build the model and plan each hospital's DP budget: fail fast."""
    from pipeline.hospital import build_model, dp_plan, hospital_data, pooled_data, test_dataset

    if cfg.strategy.get("proximal_mu", 0) and cfg.privacy.enabled:
        raise ConfigError("strategy.proximal_mu > 0 (FedProx) is not supported with privacy=dpsgd; use strategy=fedavg")
    test_dataset(cfg)
    rounds, epochs = int(cfg.federation.rounds), int(cfg.train.local_epochs)
    sites = (
        [pooled_data(cfg)]
        if cfg.federation.mode == "centralized"
        else [hospital_data(cfg, h) for h in range(int(cfg.federation.num_hospitals))]
    )
    first = sites[0]
    build_model(cfg, first.channels, first.num_classes, first.image_size)
    for i, site in enumerate(sites):
        plan = dp_plan(cfg, site.num_train, epochs, rounds)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    preflight(cfg)
    if cfg.federation.mode == "federated":
        from pipeline.simulation import run_federated

        return run_federated(cfg, run_dir)
    from pipeline.baselines import run_baseline

    return run_baseline(cfg, run_dir)


def quiet_libraries() -> None:
    """Keep the console to progress lines: libraries' debug chatter goes."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.INFO)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_libraries()
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
    try:
        summary = execute(cfg, run_dir)
    except (ConfigError, DataError) as err:
        log.error("error: %s", err)
        sys.exit(2)
    except RunFailed as err:
        log.error("run failed: %s", err)
        sys.exit(1)
    print(summary_table(summary), flush=True)
    if summary.get("status") != "completed":
        log.warning("the run stopped early: %s", summary.get("stop_reason"))


def main() -> None:
    """Console-script entry point (``fedmed-run``)."""
    hydra_main()


if __name__ == "__main__":
    main()
