"""The key holders' final step, separate from the server: decrypt the final model and test it.

After the last round, the consortium of hospitals (who share the secret key) replays the run's
saved aggregates from the public initial weights, which yields the final global model, evaluates
it on the held-out test split and writes it to the run folder. The server plays no part here and
never sees a decrypted model; in a simulation this runs as its own process.

    python -m pipeline.consortium RUN_DIR --secret-context hospitals_secret.ctx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import aggregates
from pipeline.codec import CkksCodec, PlainCodec
from pipeline.hospital import build_model, get_flat, set_flat, splits, test_dataset
from pipeline.results import SUMMARY_FILE, write_atomic
from pipeline.training import evaluate, resolve_device

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"


def rebuild(cfg: DictConfig, aggs: list[aggregates.Aggregate], codec: PlainCodec | CkksCodec) -> torch.nn.Module:
    """The global model after ``aggs``: initial weights + each round's decoded weighted mean update."""
    s = splits(cfg)
    model = build_model(cfg, s.channels, s.num_classes, s.image_size)
    flat = get_flat(model).astype(np.float64)
    for agg in aggs:
        flat = flat + codec.decode(agg.payload, agg.count, len(flat)) / agg.total_weight
    set_flat(model, flat.astype(np.float32))
    return model


def finalize(run_dir: str | Path, codec: PlainCodec | CkksCodec) -> dict:
    """Rebuild, test and save the final model; add the test metrics to summary.json."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    aggs = aggregates.load_all(run_dir)
    if not aggs:
        raise ValueError(f"{run_dir} holds no aggregates: the run finished no round")
    model = rebuild(cfg, aggs, codec)
    metrics = evaluate(model, test_dataset(cfg), resolve_device(str(cfg.device)))
    torch.save(model.state_dict(), run_dir / MODEL_FILE)
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text())
    summary["test"] = metrics
    summary["test_evaluated_by"] = "consortium of key holders (after the last round)"
    write_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decrypt, test and save a run's final model (key holders only).")
    parser.add_argument("run_dir")
    parser.add_argument("--secret-context", required=True, help="the hospitals' secret context file")
    args = parser.parse_args(argv)
    from pipeline import crypto

    ctx = crypto.load_context(Path(args.secret_context).read_bytes())
    cfg = OmegaConf.load(Path(args.run_dir) / CONFIG_FILE)
    codec = CkksCodec(ctx, crypto.server_context_bytes(ctx), cfg.encryption, int(cfg.federation.num_hospitals))
    metrics = finalize(args.run_dir, codec)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
