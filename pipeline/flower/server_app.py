"""Flower ServerApp: start the configured strategy on the grid and write the run folder.

The server sees, per hospital and round: the ciphertext (or, with encryption off, the plaintext
update), the example weight, epsilon spent and metrics. The strategy (:mod:`strategies`) adds
ciphertexts with a context that holds no key; this process never opens the hospitals' secret
context file and imports nothing that could. With encryption off, the server may rebuild the
model, so it tests each round's model on the test split itself (``global_evaluate``), and the
final model with the clinical metrics (:func:`final_test`: roc.png, calibration.png).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline import interrupts
from pipeline.errors import DataError, RunFailed
from pipeline.flower import faults
from pipeline.flower.context import PUBLIC_CONTEXT_KEY, RUN_DIR_KEY, experiment, with_defaults
from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.console import live_progress
from pipeline.reporting.plots import PLOT_FILE, plot_rounds, run_title
from pipeline.reporting.recorder import CONFIG_FILE, MODEL_FILE, RunRecorder
from pipeline.secagg.aggregates import Aggregate
from strategies.secure_fedavg import SecureFedAvg
from strategies.server_optimizers import State

log = logging.getLogger("fedmed.server")


class PlaintextTest:
    """``evaluate_fn`` of a plaintext run: rebuild each round's model from its aggregate and test it.

    Only possible because nothing is encrypted; with encryption on, the key holders test the final
    model after the run (:mod:`pipeline.secagg.consortium`).
    """

    def __init__(self, cfg: DictConfig, strategy: SecureFedAvg) -> None:
        self.cfg, self.strategy = cfg, strategy
        self.weights: np.ndarray | None = None
        self.state: State = {}
        self.test_set: Any = None
        self.final: dict[str, float] | None = None
        self.model = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        from pipeline.task.model import build_model, get_flat, set_flat
        from pipeline.task.sites import test_dataset
        from pipeline.task.training import evaluate, resolve_device

        agg = Aggregate.from_record(arrays)
        if self.weights is None:
            self.weights = get_flat(build_model(self.cfg, *self.strategy.shape)).astype(np.float64)
        delta = agg.payload.values.astype(np.float64) / agg.total_weight
        self.weights, self.state = self.strategy.server_optimizer.step(self.weights, delta, self.state)
        if self.test_set is None:
            try:
                self.test_set = test_dataset(self.cfg)
            except DataError as err:
                log.info("no server-side test evaluation: %s", err)
                self.test_set = False
        if self.test_set is False:
            return None
        self.model = build_model(self.cfg, *self.strategy.shape)
        set_flat(self.model, self.weights.astype(np.float32))
        self.final = evaluate(self.model, self.test_set, resolve_device(str(self.cfg.device)))
        return MetricRecord({"test_auc": self.final["auc"], "test_accuracy": self.final["accuracy"]})


def final_test(cfg: DictConfig, plaintext_test: PlaintextTest, rows: list[dict], run_dir: Path) -> dict[str, Any]:
    """The plaintext run's final model on the test split with its clinical metrics, at the hospitals'
    validation threshold of the last completed round (``rows``: metrics.csv); writes the plots."""
    from pipeline.reporting.clinical_plots import write_clinical_plots
    from pipeline.task.clinical import final_model_report, resolve_threshold
    from pipeline.task.training import resolve_device

    threshold = resolve_threshold(cfg.eval, rows)
    device = resolve_device(str(cfg.device))
    test, probs, labels = final_model_report(plaintext_test.model, plaintext_test.test_set, device, threshold, cfg)
    write_clinical_plots(run_dir, probs, labels, test)
    return test


def run_server(grid: Grid, cfg: DictConfig, run_dir: Path, server_context: bytes | None) -> dict[str, Any]:
    """Run the configured strategy to the end (or a pause / early stop); write and return the summary."""
    fed = cfg.federation
    strategy: SecureFedAvg = instantiate(
        cfg.strategy,
        num_hospitals=int(fed.num_hospitals),
        min_hospitals=int(fed.min_hospitals),
        server_context=server_context,
        encryption=cfg.encryption if server_context is not None else None,
    )
    strategy = faults.wrap_strategy(strategy)  # FEDMED_FAULTS server:R:kind (tests and chaos runs only)
    recorder = RunRecorder(run_dir)
    plaintext_test = PlaintextTest(cfg, strategy) if server_context is None else None
    started = time.perf_counter()
    # a live bar only where this server's console is the researcher's terminal (a simulation run there)
    strategy.progress = bar = live_progress(str(OmegaConf.select(cfg, "log.level", default="info")), int(fed.rounds))
    try:
        strategy.start(
            grid,
            ArrayRecord(),
            num_rounds=int(fed.rounds),
            timeout=float(fed.round_timeout),
            evaluate_fn=plaintext_test,
            recorder=recorder,
            resume=bool(cfg.resume),
            stop_after=fed.stop_after,
        )
    except Exception:
        if not interrupts.requested():
            raise
    finally:
        if bar is not None:
            bar.close()
    if interrupts.requested():  # the round in flight failed because of it: not a result to present
        log.info("interrupted: the server writes no summary; the run folder keeps its last checkpoint")
        return {}
    if strategy.status == "paused":
        log.warning("paused; continue with: python -m pipeline.run resume=%s", run_dir)
    privacy = cfg.privacy
    tested = plaintext_test is not None and plaintext_test.model is not None and strategy.status != "paused"
    summary = strategy.run_summary(time.perf_counter() - started)
    kinds = strategy.privacy_report()["randomness"]
    summary.update(
        mode="federated",
        encrypted=server_context is not None,
        run_dir=str(run_dir),
        rounds_planned=int(fed.rounds),
        # plaintext: server-side; encrypted: filled by the consortium; paused: not yet
        test=final_test(cfg, plaintext_test, recorder.rows, run_dir) if tested else None,
        epsilon=summary["epsilon"] if privacy.enabled else {},
        epsilon_target=float(privacy.epsilon) if privacy.enabled else None,
        delta=float(privacy.delta) if privacy.enabled else None,
        # private: DP on and no hospital's mechanism followed the config's seed (privacy.json says how each drew)
        private=bool(privacy.enabled) and not privacy.reproducible and "reproducible" not in kinds,
        randomness=kinds,
    )
    recorder.write_summary(summary)
    title = run_title(cfg, len(strategy.sites))
    plot_rounds(strategy.rows, run_dir / PLOT_FILE, title, summary["epsilon_target"])
    if tested:
        from pipeline.task.model import save_model

        save_model(plaintext_test.model, run_dir / MODEL_FILE)
    return summary


def make_app(run_config: dict | None = None) -> ServerApp:
    """The ServerApp; a simulation binds the run config (experiment, run folder, server context)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        context = with_defaults(context, run_config, None)
        cfg = experiment(context)
        run_dir = Path(str(context.run_config.get(RUN_DIR_KEY) or "."))
        if not (run_dir / CONFIG_FILE).exists():  # started by `flwr run` directly, not through pipeline.run
            write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
        server_context = None
        if cfg.encryption.enabled:
            path = str(context.run_config.get(PUBLIC_CONTEXT_KEY, ""))
            if not path:
                raise RunFailed("encryption is on but the run config has no public-context file for the server")
            server_context = Path(path).read_bytes()
        run_server(grid, cfg, run_dir, server_context)

    return server_app


# Entry point for `flwr run` (pyproject [tool.flwr.app.components]).
app = make_app()
