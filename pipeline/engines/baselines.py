"""The baselines PriMIA compared against, with the same data, model, training and evaluation code.

``federation.mode=centralized``: all hospitals' training shares pooled at one site.
``federation.mode=local``: each hospital trains alone; each one's test metrics are reported.
Both train ``rounds x local_epochs`` epochs in ``rounds`` blocks (so metrics.csv has the same
rows as a federated run), with DP-SGD accounted over all blocks when privacy is on. The final
model's test metrics include the clinical ones (:mod:`pipeline.task.clinical`) at the Youden
threshold on the site's own validation data (pooled, or the hospital's) of the last round; roc.png
and calibration.png (local: roc_hospital<h>.png, calibration_hospital<h>.png) go into the run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.privacy.randomness import round_randomness
from pipeline.reporting.clinical_plots import write_clinical_plots
from pipeline.reporting.plots import PLOT_FILE, plot_rounds, run_title
from pipeline.reporting.recorder import MODEL_FILE, RunRecorder
from pipeline.task.clinical import final_model_report, resolve_threshold, validation_metrics
from pipeline.task.model import build_model, save_model
from pipeline.task.sites import HospitalData, hospital_data, pooled_data, test_dataset
from pipeline.task.training import evaluate, resolve_device, round_seed, train_round

log = logging.getLogger("fedmed")
# local mode: the clinical numbers summary.json's "test" shows as means over the hospitals' models
LOCAL_MEANS = ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "ece")


def _train_site(cfg: DictConfig, data: HospitalData, name: str, site: int, recorder: RunRecorder | None) -> tuple:
    """Train one site for all rounds; returns (model, epsilon, rows)."""
    device = resolve_device(str(cfg.device))
    rounds, epochs = int(cfg.federation.rounds), int(cfg.train.local_epochs)
    model = build_model(cfg, data.channels, data.num_classes, data.image_size)
    plan = plan_for_run(cfg, data.num_train)
    ledger = PrivacyLedger(str(cfg.privacy.accountant)) if plan else None
    test = test_dataset(cfg)
    rows = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        randomness = round_randomness(cfg.privacy, int(cfg.seed), site, rnd)
        seed = round_seed(int(cfg.seed), site, rnd)
        stats = train_round(cfg, model, data.train, epochs, device, plan, ledger, seed, randomness=randomness)
        val, tst = validation_metrics(model, data.val, device), evaluate(model, test, device)
        eps = ledger.epsilon(plan.delta) if ledger else 0.0
        row = {
            "round": rnd,
            "hospitals": 1,
            "train_loss": stats["train_loss"],
            "val_loss": val["loss"],
            "val_auc": val["auc"],
            "val_accuracy": val["accuracy"],
            "val_mcc": val["mcc"],
            "val_threshold": val["threshold"] if val["threshold"] is not None else float("nan"),
            "test_auc": tst["auc"],
            "test_accuracy": tst["accuracy"],
            "epsilon_max": eps,
            "seconds": time.perf_counter() - t0,
            "bytes_up": 0,
            "bytes_down": 0,
        }
        rows.append(row)
        log.info(
            "%s: round %d/%d | train loss %.4f | val AUC %.4f | test AUC %.4f | epsilon %.3f",
            name,
            rnd,
            rounds,
            row["train_loss"],
            val["auc"],
            tst["auc"],
            eps,
        )
        if recorder is not None:
            recorder.add_round(row)
    return model, (ledger.epsilon(plan.delta) if ledger else None), rows


def _final_test(cfg: DictConfig, model, rows: list[dict], data: str, run_dir: Path, suffix: str = "") -> dict:
    """The trained model's test metrics with the clinical ones at the Youden threshold on ``data``
    (its validation data) of the last round in ``rows``; writes roc<suffix>.png, calibration<suffix>.png."""
    threshold = resolve_threshold(cfg.eval, rows, data)
    test, probs, labels = final_model_report(model, test_dataset(cfg), resolve_device(str(cfg.device)), threshold, cfg)
    write_clinical_plots(run_dir, probs, labels, test, suffix)
    return test


def run_baseline(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the centralized or local baseline; write metrics.csv, summary.json, curves.png, model.pt."""
    started = time.perf_counter()
    recorder = RunRecorder(run_dir)
    mode = str(cfg.federation.mode)
    summary: dict = {
        "status": "completed",
        "mode": mode,
        "encrypted": False,
        "run_dir": str(run_dir),
        "rounds_planned": int(cfg.federation.rounds),
        "rounds_completed": int(cfg.federation.rounds),
        "epsilon_target": float(cfg.privacy.epsilon) if cfg.privacy.enabled else None,
        "delta": float(cfg.privacy.delta) if cfg.privacy.enabled else None,
    }
    if mode == "centralized":
        model, eps, rows = _train_site(cfg, pooled_data(cfg), "centralized", 0, recorder)
        summary["num_hospitals"] = int(cfg.federation.num_hospitals)
        summary["test"] = _final_test(cfg, model, rows, "the pooled validation data", run_dir)
        summary["epsilon"] = {"pooled": eps} if eps is not None else {}
        save_model(model, run_dir / MODEL_FILE)
    else:
        per_site, eps_all, all_rows = {}, {}, []
        for h in range(int(cfg.federation.num_hospitals)):
            model, eps, rows = _train_site(cfg, hospital_data(cfg, h), f"hospital {h} alone", h, None)
            data = f"hospital {h}'s validation data"
            per_site[str(h)] = _final_test(cfg, model, rows, data, run_dir, f"_hospital{h}")
            if eps is not None:
                eps_all[str(h)] = eps
            all_rows.append(rows)
            save_model(model, run_dir / f"model_hospital{h}.pt")
        for r in range(len(all_rows[0])):  # metrics.csv: the mean over hospitals per round
            keys = [k for k, v in all_rows[0][r].items() if isinstance(v, (int, float))]
            mean = {k: float(np.mean([rows[r][k] for rows in all_rows])) for k in keys}
            mean["round"], mean["hospitals"] = r + 1, len(all_rows)
            mean["epsilon_max"] = max(rows[r]["epsilon_max"] for rows in all_rows)
            recorder.add_round(mean)
        summary["num_hospitals"] = len(per_site)
        summary["test_per_hospital"] = per_site
        summary["test"] = {
            k: float(np.mean([m[k] for m in per_site.values()]))
            for k in ("auc", "accuracy", "mcc", "loss", *LOCAL_MEANS)
            if all(m.get(k) is not None for m in per_site.values())
        }
        if "threshold" in summary["test"]:
            summary["test"]["threshold_source"] = "mean of each hospital's own (test_per_hospital)"
        summary["epsilon"] = eps_all
    summary["final_validation"] = {k: v for k, v in recorder.rows[-1].items() if k.startswith("val_")}
    summary["seconds"] = time.perf_counter() - started
    recorder.write_summary(summary)
    title = f"{mode} baseline: {run_title(cfg, int(summary['num_hospitals']))}"
    plot_rounds(recorder.rows, run_dir / PLOT_FILE, title, float(cfg.privacy.epsilon) if cfg.privacy.enabled else None)
    return summary
