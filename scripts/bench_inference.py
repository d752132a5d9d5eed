"""Encrypted inference against plaintext on a run's test split: agreement, seconds and bytes.

    python scripts/bench_inference.py RUN_DIR [--data-root DIR] [--limit N] [--batch-size 624]
                                      [--full-batch] [--skip-single]

Single-image queries (im2col layout) over the test split (or its first --limit images), then one
batch query (slots layout) of --batch-size test images (default: all of them), and with
--full-batch one query filling every slot (4096 training-split images). The model owner runs in
its own process throughout. Writes RUN_DIR/inference/bench_inference.json and prints Markdown rows
for docs/BENCHMARKS.md. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.inference.clear import INFERENCE_DIR, input_tensors, load_run, predict_logits, read_split  # noqa: E402
from pipeline.inference.encrypted import CkksParams  # noqa: E402
from pipeline.inference.report import encrypted_report  # noqa: E402
from pipeline.inference.session import encrypted_logits  # noqa: E402
from pipeline.reporting.recorder import write_json  # noqa: E402

HEADER = (
    "| layout | images | images/query | agreement | max logit diff | AUC enc / plain | encrypt s/img | evaluate s/img "
    "| decrypt s/img | total s/img | up per query | down per query | eval keys |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _row(r: dict) -> str:
    s, enc, plain = r["seconds_per_image"], r["metrics_encrypted"] or {}, r["metrics_plaintext"] or {}
    auc = f"{enc.get('auc', float('nan')):.4f} / {plain.get('auc', float('nan')):.4f}"
    return (
        f"| {r['layout']} | {r['images']} | {r['images_per_query']} | {100 * r['agreement']:.2f}% "
        f"| {r['max_logit_difference']:.1e} | {auc} | {s['encrypt']:.4f} | {s['evaluate']:.4f} | {s['decrypt']:.4f} "
        f"| {s['total']:.4f} | {r['bytes_per_query']['up'] / 2**20:.3f} MiB "
        f"| {r['bytes_per_query']['down'] / 2**20:.3f} MiB | {r['evaluation_key_bytes'] / 2**20:.1f} MiB |"
    )


def _measure(run, split: str, limit: int | None, batch: int, data_root: str | None) -> dict:
    inputs = read_split(run, split).head(limit)
    x = input_tensors(run, inputs)
    plain = predict_logits(run, x)
    start = time.perf_counter()
    enc = encrypted_logits(
        run.run_dir, x.double().numpy(), CkksParams(), batch, data_root, lambda m: print(m, file=sys.stderr)
    )
    report = encrypted_report(run, inputs, plain, enc)
    report["bench_wall_seconds"] = time.perf_counter() - start
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None, help="single-image queries for the first N test images only")
    p.add_argument("--batch-size", type=int, default=None, help="test images in the batch query (default: all)")
    p.add_argument("--full-batch", action="store_true", help="also one query of 4096 training-split images")
    p.add_argument("--skip-single", action="store_true", help="no single-image queries")
    a = p.parse_args()
    try:
        run = load_run(a.run_dir, a.data_root)
        results = {}
        if not a.skip_single:
            results["single"] = _measure(run, "test", a.limit, 1, a.data_root)
        n_test = len(read_split(run, "test"))
        batch = min(a.batch_size or n_test, n_test)
        results["batch"] = _measure(run, "test", batch, batch, a.data_root)
        if a.full_batch:
            results["full_batch"] = _measure(run, "train", 4096, 4096, a.data_root)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json(run.run_dir / INFERENCE_DIR / "bench_inference.json", results)
    print(HEADER)
    for r in results.values():
        print(_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
