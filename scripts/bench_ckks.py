"""Cost of secure aggregation (key agreement, masks, Shamir shares, CKKS) per hospital per round.

    python scripts/bench_ckks.py --data-root ../shared/data [--models cnn resnet18] [--hospitals 3 10]

For each model and federation size it runs one round of the real protocol in one process: signed
agreement keys, pairwise keys, masks and shares (:mod:`pipeline.secagg.protocol`), masked CKKS
encryption, the server's sum, the survivors' unmask answers, the server's recovery of the self
masks, and the hospitals' verified decode. It prints bytes per parameter each way (the unmask
exchange included) and the seconds of each step, next to the seconds of one round of local DP
training (measured on one hospital's share), as a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from pipeline.config import compose
from pipeline.flower import messages as M
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.secagg import keys
from pipeline.secagg.codec import CkksCodec, PlainCodec
from pipeline.secagg.masks import round_check
from pipeline.secagg.params import layout, share_threshold, slots_per_chunk
from pipeline.secagg.protocol import fresh_parties
from pipeline.secagg.recovery import RoundSecrets, recover, unmask_requests
from pipeline.secagg.server_sum import new_sum
from pipeline.task.model import build_model, get_flat
from pipeline.task.sites import hospital_data
from pipeline.task.training import train_round

TEN_HOSPITALS = ["encryption.fields_per_slot=4", "encryption.field_bits=10", "encryption.global_scale_bits=14"]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def protocol_round(cfg, codec: CkksCodec, server: bytes, updates: list[np.ndarray], rng) -> dict[str, float]:
    """One round of the real protocol for ``len(updates)`` hospitals; seconds per step and bytes."""
    k, n = len(updates), len(updates[0])
    minimum, study = int(cfg.federation.min_hospitals), "bench"
    with tempfile.TemporaryDirectory() as folder:
        parties = fresh_parties(folder, k, study, minimum)
        adverts = {p.me: p.advert() for p in parties}
        keys_by, agree_s = {}, []
        for p in parties:
            keys_by[p.me], s = timed(p.pairwise_keys, adverts)
            agree_s.append(s)
        payloads, encode_s, rounds = [], [], {}
        for p, u in zip(parties, updates, strict=True):
            start = time.perf_counter()
            rounds[p.me] = p.round_masks(1, 0, keys_by[p.me])
            payloads.append(codec.encode(u, rng, rounds[p.me].masking, round_check(study, 1, 0)))
            encode_s.append(time.perf_counter() - start)
        total = new_sum(size=n, server_context=server, num_chunks=len(payloads[0].chunks))
        start = time.perf_counter()
        for pl in payloads:
            assert total.problem(pl) is None
            total.add(pl)
        agg = total.result()
        sum_s = time.perf_counter() - start
        secrets = RoundSecrets()
        for p in parties:
            r = rounds[p.me]
            conf = {M.SHARES_TO: sorted(r.shares), M.SHARES: [r.shares[j] for j in sorted(r.shares)]}
            secrets.keep(p.me, {**conf, M.SELF_COMMIT: r.commitment}, payloads[p.me].chunks[-1])
        survivors = list(range(k))
        shape = layout(n, cfg.encryption)
        key_slot = shape.key_slot - (len(payloads[0].chunks) - 1) * slots_per_chunk(cfg.encryption)
        requests = unmask_requests(survivors, survivors, secrets, key_slot)
        answers, unmask_s, unmask_bytes = {}, [], []
        for p in parties:
            req = requests[p.me]
            start = time.perf_counter()
            shares_from = dict(zip(req[M.SHARES_FROM], req[M.SHARES], strict=True))
            own, pair = p.unmask(1, 0, req[M.SURVIVORS], req[M.DROPPED], shares_from, keys_by[p.me])
            verdict = codec.key_check(req[M.VERIFY_CHUNK], req[M.VERIFY_SLOT]) if M.VERIFY_CHUNK in req else None
            assert not verdict, verdict
            unmask_s.append(time.perf_counter() - start)
            unmask_bytes.append(len(req.get(M.VERIFY_CHUNK, b"")) + sum(len(x) for x in req[M.SHARES]))
            answers[p.me] = {
                M.SELF_SHARES_OF: sorted(own),
                M.SELF_SHARES: [own[j] for j in sorted(own)],
                M.PAIR_WITH: sorted(pair),
                M.PAIR_SEEDS: [pair[d] for d in sorted(pair)],
            }
        info, recover_s = timed(recover, survivors, survivors, answers, secrets, share_threshold(minimum))
        _, decode_s = timed(codec.open_aggregate, agg, k, n, info, study, 1, minimum)
    up = payloads[0].nbytes + sum(len(t) for t in rounds[0].shares.values())
    return {
        "agree": float(np.mean(agree_s)),
        "encode": float(np.mean(encode_s)),
        "sum": sum_s,
        "unmask": float(np.mean(unmask_s)),
        "recover": recover_s,
        "decode": decode_s,
        "up": up / n,
        "down": (agg.nbytes + float(np.mean(unmask_bytes))) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--hospitals", nargs="+", type=int, default=[3, 10])
    p.add_argument("--skip-training", action="store_true", help="do not time a local training round")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| model | params | hospitals | B/param up | B/param down | B/param plaintext | key agreement s "
        "| mask + encrypt s | sum s (server) | unmask s | recover s (server) | decrypt + check s "
        "| local round s | crypto share of round |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        for k in a.hospitals:
            overrides = [f"model={name}", f"data.root={a.data_root}", f"federation.num_hospitals={k}"]
            if k > 8:  # 10-30 hospitals need more headroom bits per field (see conf/encryption/ckks.yaml)
                overrides += TEN_HOSPITALS
            cfg = compose(*overrides)
            data = hospital_data(cfg, 0)
            model = build_model(cfg, data.channels, data.num_classes, data.image_size)
            n = len(get_flat(model))
            ctx = keys.make_secret_context(cfg.encryption)
            server = keys.server_context_bytes(ctx)
            codec = CkksCodec(ctx, server, cfg.encryption, k)
            updates = [rng.normal(0, 0.01, n) for _ in range(k)]
            t = protocol_round(cfg, codec, server, updates, rng)
            plain_bytes = PlainCodec().encode(updates[0], rng).nbytes
            if a.skip_training:
                train_s = float("nan")
            else:
                plan = plan_for_run(cfg, data.num_train)
                epochs = int(cfg.train.local_epochs)
                stats = train_round(cfg, model, data.train, epochs, torch.device("cpu"), plan, PrivacyLedger("rdp"), 0)
                train_s = stats["train_seconds"]
            # one hospital's crypto work plus the server's, against one hospital's training
            crypto_s = sum(t[key] for key in ("agree", "encode", "sum", "unmask", "recover", "decode"))
            print(
                f"| {name} | {n} | {k} | {t['up']:.2f} | {t['down']:.2f} | {plain_bytes / n:.2f} | {t['agree']:.3f} "
                f"| {t['encode']:.3f} | {t['sum']:.3f} | {t['unmask']:.3f} | {t['recover']:.3f} | {t['decode']:.3f} "
                f"| {train_s:.1f} | {100 * crypto_s / (crypto_s + train_s):.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
