"""The key holders' final step, separate from the server: decrypt the final model and test it.

After the last round, the consortium of hospitals (who share the secret key) replays the run's
saved aggregates from the public initial weights with the run's server optimizer, exactly as
every hospital applied them, which yields the final global model; it evaluates it on the
held-out test split (with the clinical metrics of :mod:`pipeline.task.clinical` at the hospitals'
validation threshold of the last completed round, from metrics.csv) and writes it, roc.png and
calibration.png to the run folder. The server plays no part here and never sees a decrypted
model; in a simulation this runs in its own process, forked from the driver after the rounds
(:mod:`pipeline.engines.forked`).

    python -m pipeline.secagg.consortium RUN_DIR --secret-context hospitals_secret.ctx
    (= python scripts/consortium.py ..., fedmed-consortium ...)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.heap import quick_exit
from pipeline.reporting.clinical_plots import write_clinical_plots
from pipeline.reporting.recorder import CONFIG_FILE, METRICS_FILE, MODEL_FILE, SUMMARY_FILE, read_metrics, write_json
from pipeline.secagg import aggregates
from pipeline.secagg.codec import AggregateRefused, CkksCodec, PlainCodec
from pipeline.task.clinical import final_model_report, resolve_threshold
from pipeline.task.model import build_model, get_flat, save_model, set_flat
from pipeline.task.sites import splits, test_dataset
from pipeline.task.training import resolve_device


def rebuild(cfg: DictConfig, aggs: list[aggregates.Aggregate], codec: PlainCodec | CkksCodec) -> torch.nn.Module:
    """The global model after ``aggs``: the public initial weights, then each round's decoded step.

    Every encrypted aggregate is unmasked and checked as the hospitals check it.

    Raises:
        AggregateRefused: an aggregate fails its checks (forged, replayed, short, another key).
    """
    s = splits(cfg)
    model = build_model(cfg, s.channels, s.num_classes, s.image_size)
    initial = get_flat(model).astype(np.float64)

    study, minimum = str(cfg.get("study_id") or ""), int(cfg.federation.min_hospitals)

    def decode(agg: aggregates.Aggregate) -> np.ndarray:
        try:
            return codec.open_aggregate(agg.payload, agg.count, len(initial), agg.unmask, study, agg.round, minimum)
        except AggregateRefused as err:
            raise AggregateRefused(f"round {agg.round}: {err}") from None

    weights, _ = aggregates.replay(initial, aggs, decode)
    set_flat(model, weights.astype(np.float32))
    return model


def finalize(run_dir: str | Path, codec: PlainCodec | CkksCodec) -> dict:
    """Rebuild, test and save the final model; add the test metrics to summary.json, write the ROC and
    calibration plots."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    aggs = aggregates.load_all(run_dir)
    if not aggs:
        raise ValueError(f"{run_dir} holds no aggregates: the run finished no round")
    model = rebuild(cfg, aggs, codec)
    threshold = resolve_threshold(cfg.eval, read_metrics(run_dir / METRICS_FILE))
    metrics, probs, labels = final_model_report(
        model, test_dataset(cfg), resolve_device(str(cfg.device)), threshold, cfg
    )
    save_model(model, run_dir / MODEL_FILE)
    write_clinical_plots(run_dir, probs, labels, metrics)
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text())
    summary["test"] = metrics
    summary["test_evaluated_by"] = "consortium of key holders (after the last round)"
    write_json(summary_path, summary)
    return metrics


def test_final_model(run_dir: str | Path, secret_context: str | Path) -> dict:
    """:func:`finalize` with the hospitals' secret context file (what the simulation's consortium
    process runs). Raises AggregateRefused like :func:`rebuild`."""
    from pipeline.secagg.keys import load_secret_context

    ctx, server_bytes = load_secret_context(str(secret_context))
    cfg = OmegaConf.load(Path(run_dir) / CONFIG_FILE)
    codec = CkksCodec(ctx, server_bytes, cfg.encryption, int(cfg.federation.num_hospitals))
    return finalize(run_dir, codec)


def main(argv: list[str] | None = None) -> int:
    """Command line: decrypt, test and save a run's final model."""
    parser = argparse.ArgumentParser(description="Decrypt, test and save a run's final model (key holders only).")
    parser.add_argument("run_dir")
    parser.add_argument("--secret-context", required=True, help="the hospitals' secret context file")
    args = parser.parse_args(argv)
    quick_exit()  # no walk of the imported libraries' heap at exit (pipeline.heap)
    try:
        metrics = test_final_model(args.run_dir, args.secret_context)
    except AggregateRefused as err:
        print(f"error: the consortium refuses to replay an aggregate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
