"""Cost of CKKS secure aggregation per hospital per round, next to plaintext and local training.

    python scripts/bench_ckks.py --data-root ../shared/data [--models cnn resnet18] [--hospitals 3 10]

For each model: bytes up and down per parameter (encrypted and plaintext), seconds to encrypt
(one hospital), to add the replies of 3 and 10 hospitals (server), and to decrypt (one hospital),
next to the seconds of one round of local DP training (measured on one hospital's share).
Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.config import compose
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.secagg import keys
from pipeline.secagg.codec import CkksCodec, PlainCodec
from pipeline.secagg.server_sum import new_sum
from pipeline.task.model import build_model, get_flat
from pipeline.task.sites import hospital_data
from pipeline.task.training import train_round


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--hospitals", nargs="+", type=int, default=[3, 10])
    p.add_argument("--skip-training", action="store_true", help="do not time a local training round")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| model | params | hospitals | B/param up (CKKS) | B/param down (CKKS) | B/param plaintext | encrypt s "
        "| aggregate s (server) | decrypt s | local round s | crypto share of round |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        for k in a.hospitals:
            overrides = [f"model={name}", f"data.root={a.data_root}", f"federation.num_hospitals={k}"]
            if k > 3:  # 10+ hospitals need more headroom bits per field (see conf/encryption/ckks.yaml)
                overrides += [
                    "encryption.fields_per_slot=4",
                    "encryption.field_bits=11",
                    "encryption.global_scale_bits=15",
                ]
            cfg = compose(*overrides)
            data = hospital_data(cfg, 0)
            model = build_model(cfg, data.channels, data.num_classes, data.image_size)
            n = len(get_flat(model))
            ctx = keys.make_secret_context(cfg.encryption)
            server = keys.server_context_bytes(ctx)
            codec = CkksCodec(ctx, server, cfg.encryption, k)
            updates = [rng.normal(0, 0.01, n) for _ in range(k)]
            payloads, enc_s = [], []
            for u in updates:
                pl, s = timed(codec.encode, u, rng)
                payloads.append(pl)
                enc_s.append(s)
            total = new_sum(size=n, server_context=server, num_chunks=len(payloads[0].chunks))
            start = time.perf_counter()
            for pl in payloads:
                assert total.problem(pl) is None
                total.add(pl)
            agg = total.result()
            agg_s = time.perf_counter() - start
            _, dec_s = timed(codec.decode, agg, k, n)
            plain_bytes = PlainCodec().encode(updates[0], rng).nbytes
            if a.skip_training:
                train_s = float("nan")
            else:
                plan = plan_for_run(cfg, data.num_train)
                epochs = int(cfg.train.local_epochs)
                stats = train_round(cfg, model, data.train, epochs, torch.device("cpu"), plan, PrivacyLedger("rdp"), 0)
                train_s = stats["train_seconds"]
            crypto_s = float(np.mean(enc_s)) + agg_s + dec_s
            print(
                f"| {name} | {n} | {k} | {payloads[0].nbytes / n:.2f} | {agg.nbytes / n:.2f} | {plain_bytes / n:.2f} "
                f"| {np.mean(enc_s):.3f} | {agg_s:.3f} | {dec_s:.3f} | {train_s:.1f} "
                f"| {100 * crypto_s / (crypto_s + train_s):.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
