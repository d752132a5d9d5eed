"""Entry point: ``python -m pipeline.run [overrides]`` (or ``fedmed-run``), one run per Hydra job.

Checks the whole config before starting anything and the data before any hospital trains (a bad
value stops the run with one line naming it; a simulation's Ray starts beside the data checks and
stops again if they fail), then runs the federated simulation or a baseline, and writes everything to
the run folder: config.yaml, metrics.csv, summary.json, curves.png, model.pt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import interrupts
from pipeline.config import conf_dir, validate
from pipeline.config import paths as _paths  # noqa: F401  (registers the config's resolvers)
from pipeline.config.resume import resume_config
from pipeline.errors import ConfigError, DataError, RunFailed
from pipeline.heap import freeze_heap, quick_exit
from pipeline.reporting import logs
from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.console import close_live_progress, summary_table
from pipeline.reporting.lock import FolderLock, refuse_if_locked, release_all
from pipeline.reporting.recorder import CONFIG_FILE

log = logging.getLogger("fedmed")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the run stops; the exit status is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    """The first SIGINT/SIGTERM stops the run (Ray's shutdown chatter goes to run.log); later ones wait for it."""
    if interrupts.requested():
        return
    interrupts.request(signum)
    logs.mute_console()
    raise Interrupted(signum)


def check_device(cfg: DictConfig) -> None:
    """``device=cuda`` / ``cuda:N`` needs that GPU here (the simulated hospitals train on this machine).

    Raises:
        ConfigError: CUDA is not available, or there is no GPU ``N``.
    """
    device = str(cfg.device)
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device}: CUDA is not available on this machine (torch.cuda.is_available() is false); "
            "use device=auto or device=cpu"
        )
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(f"device={device}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 and up")


def check_settings(cfg: DictConfig) -> None:
    """What the machine and the libraries must allow (the device, the tracking backend, FedProx with
    DP), checked before anything starts."""
    from pipeline.reporting.tracking import check_backend

    check_device(cfg)
    check_backend(cfg)
    if cfg.strategy.get("proximal_mu", 0) and cfg.privacy.enabled:
        raise ConfigError("strategy.proximal_mu > 0 (FedProx) is not supported with privacy=dpsgd; use strategy=fedavg")


def preflight(cfg: DictConfig) -> None:
    """Load the data, partition it, build the model and plan each hospital's DP budget: fail fast."""
    from pipeline.privacy.plan import plan_for_run
    from pipeline.task.model import build_model
    from pipeline.task.sites import hospital_data, pooled_data, test_dataset

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
    """Validate, check, run; return the summary. Raises ConfigError / DataError / RunFailed.

    The run folder is locked (:class:`~pipeline.reporting.lock.FolderLock`, ``<run_dir>/.fedmed.lock``)
    from before its config.yaml is written until the run returns: a second run in the folder of a
    live one fails with one line naming it (RunFailed) and changes nothing there.

    summary.json ``timing`` says where the run's seconds went: ``start`` (Python, imports, config),
    ``preflight``, the engine's parts (key generation, Ray, the size query, the rounds and their
    phases, the consortium's test) and ``total``.
    """
    from pipeline.reporting.timing import Stopwatch, process_seconds

    watch = Stopwatch()
    watch.add("start", process_seconds())
    cfg = validate(cfg)
    if not cfg.get("study_id"):
        cfg.study_id = new_study_id()
    if cfg.privacy.enabled and cfg.privacy.reproducible:
        log.warning(
            "privacy.reproducible=true: the DP batches and noise follow the config's seed, so anyone with the "
            'config can recompute them; this run is NOT private (summary.json: "private": false)'
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    simulated = cfg.federation.mode == "federated" and cfg.get("deployment") is None
    # the lock comes first: a second run in a live run's folder is refused before it rewrites anything
    with FolderLock(run_dir), contextlib.ExitStack() as stack:
        # a resumed run rewrites the same config (plus settings newer than the run, see resume_config)
        write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
        with watch.phase("preflight"):
            check_settings(cfg)
            cluster = None
            if simulated:  # Ray starts (and its workers import) while the data and budgets are checked
                from pipeline.engines.simulation import RayCluster, ray_cpus

                cluster = RayCluster(ray_cpus(cfg)).start()
                stack.callback(cluster.stop)  # a refusal below stops it again
            preflight(cfg)
        freeze_heap()  # the libraries are imported: keep their objects out of every later collection
        if cfg.federation.mode == "federated" and cfg.get("deployment") is not None:
            from pipeline.engines.deployment import run_local_deployment

            summary = run_local_deployment(cfg, run_dir)
        elif simulated:
            from pipeline.engines.simulation import run_federated

            summary = run_federated(cfg, run_dir, cluster)
        else:
            from pipeline.engines.baselines import run_baseline

            summary = run_baseline(cfg, run_dir)
        summary["timing"] = {**watch.seconds, **summary.get("timing", {}), "total": process_seconds()}
        summary = record_provenance(cfg, run_dir, summary)
        if cfg.federation.mode == "federated" and cfg.get("deployment") is None:
            from pipeline.engines.simulation import discard_hospital_folder

            discard_hospital_folder(cfg, run_dir, summary)  # only now: until here a kill resumes with it
        return summary


def new_study_id() -> str:
    """A fresh study id: the date and random hex (hospitals' lifetime ledgers list studies by it)."""
    return f"study-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def record_provenance(cfg: DictConfig, run_dir: Path, summary: dict) -> dict:
    """Add versions, git commit, machine and data fingerprint to summary.json (honest comparisons)."""
    from pipeline.reporting import provenance
    from pipeline.reporting.recorder import SUMMARY_FILE, write_json
    from pipeline.reporting.tracking import log_run

    summary["provenance"] = provenance.collect(cfg)
    write_json(run_dir / SUMMARY_FILE, summary)

    log_run(cfg, run_dir, summary)
    return summary


def interrupted(cfg: DictConfig, run_dir: Path, signum: int) -> None:
    """The one line of an interrupted run (everything it started is stopped by now); exit 128 + signum.

    ``os._exit``: Flower's server thread may still wait for replies that never come; nothing of the
    run is left to save (each completed round was checkpointed as it ended); the folder locks this
    process holds are released first.
    """
    logs.unmute_console()
    close_live_progress()
    stopped = "every deployment process was stopped; " if cfg.get("deployment") is not None else ""
    log.error("interrupted: %s%s", stopped, _saved(run_dir))
    release_all()  # os._exit skips atexit: the run's folder locks go now
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _saved(run_dir: Path) -> str:
    """What an interrupted run leaves: its checkpointed rounds and the command that continues it."""
    import json

    from pipeline.reporting.recorder import CHECKPOINT_FILE

    if not (run_dir / CONFIG_FILE).exists():
        return "nothing was started yet; run the command again"
    try:
        done = int(json.loads((run_dir / CHECKPOINT_FILE).read_text())["completed_round"])
    except (OSError, ValueError, KeyError):
        done = 0
    rounds = {0: "no round is complete yet, the run is", 1: "round 1 is"}.get(done, f"rounds 1-{done} are")
    return f"{rounds} saved in {run_dir}; continue with: python -m pipeline.run resume={run_dir}"


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    level = OmegaConf.select(cfg, "log.level", default="info")
    logs.setup_logging(level if level in logs.LEVELS else "info")  # a bad value is refused by validate()
    for signum in (signal.SIGINT, signal.SIGTERM):  # both end the run the same way; checkpoints stay intact
        signal.signal(signum, _interrupt)
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
    try:
        if cfg.resume:
            cfg = resume_config(cfg, list(HydraConfig.get().overrides.task))
        run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
        summary = execute(cfg, run_dir)
    except Exception as err:
        if interrupts.requested():  # what the interrupt broke (Flower re-raises it as its own error)
            interrupted(cfg, run_dir, interrupts.signal_number() or signal.SIGINT)
        if isinstance(err, (ConfigError, DataError)):
            log.error("error: %s", err)
            sys.exit(2)
        if isinstance(err, RunFailed):
            log.error("run failed: %s", err)
            sys.exit(1)
        raise
    except KeyboardInterrupt as err:
        interrupted(cfg, run_dir, getattr(err, "signum", signal.SIGINT))
    print(summary_table(summary), flush=True)
    if summary.get("status") == "stopped_early":
        log.warning("the run stopped early: %s", summary.get("stop_reason"))


def main() -> None:
    """Console-script entry point (``fedmed-run``): unknown keys and options stop in one line, then Hydra runs."""
    from pipeline.config.suggest import exit_on_unknown_override

    quick_exit()
    exit_on_unknown_override(sys.argv[1:])
    exit_on_locked_folder(sys.argv[1:])
    hydra_main()


def exit_on_locked_folder(argv: list[str]) -> None:
    """``run_dir=`` / ``resume=`` naming a folder a live run holds: ``run failed: ...`` on stderr, exit 1.

    Hydra would otherwise rewrite that folder's ``.hydra/`` and append to its run.log before
    :func:`execute` takes the lock (which stays the arbiter: this check only answers early).
    """
    for arg in argv:
        key, sep, value = arg.partition("=")
        value = value.strip().strip("'\"")
        if sep and key.lstrip("+~") in ("run_dir", "resume") and value not in ("", "null"):
            try:
                refuse_if_locked(Path(value).expanduser())
            except RunFailed as err:
                print(f"run failed: {err}", file=sys.stderr, flush=True)
                sys.exit(1)


if __name__ == "__main__":
    main()
