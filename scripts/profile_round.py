"""Profile one hospital's round of the default run: where its seconds go, grouped, with the top functions.

    python scripts/profile_round.py --data-root ../shared/data [--top 15] [overrides ...]

Runs hospital 0's work of one round in this process under cProfile, as its ClientApp does it:
local training (DP-SGD on its real share, the default config), encoding its update with a fresh
CKKS key and the packing of the run, decoding a sum, and the validation of the new model. Prints a
Markdown table of seconds per group (augmentation, ScatterNet features, forward/backward,
per-sample clipping, noise, accounting, data loading, CKKS) and the top functions by cumulative
time, for docs/BENCHMARKS.md.
The round-level split (the hospitals and the server together) is in every run's ``metrics.csv``
(``phase_*``); this is the magnifying glass for the hospital's part.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np

from pipeline.config import compose
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.privacy.randomness import round_randomness
from pipeline.task import training
from pipeline.task.clinical import validation_metrics
from pipeline.task.model import build_model, get_flat, set_flat
from pipeline.task.sites import hospital_data

# (group, substrings of "file:function" that belong to it), first match wins
GROUPS = (
    ("augmentation (transforms)", ("transforms.py:__call__", "LightAffine", "spatial/array.py")),
    ("ScatterNet features", ("scattering.py:forward",)),
    ("per-sample clipping (bk)", ("bk_clipping.py:clip_gradients",)),
    ("noise", ("randomness.py:add_noise",)),
    ("accounting (epsilon)", ("accounting.py:history_epsilon",)),
    ("CKKS encode", ("codec.py:encode",)),
    ("CKKS decode", ("codec.py:open_aggregate", "codec.py:decode")),
    ("validation", ("clinical.py:validation_metrics",)),
    ("training loop", ("training.py:train_round",)),
)


def grouped(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the first function of each group (nested groups are not subtracted)."""
    out = dict.fromkeys((g for g, _ in GROUPS), 0.0)
    for (file, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        label = f"{file}:{name}"
        for group, needles in GROUPS:
            if any(n in label for n in needles):
                out[group] = max(out[group], cumulative)
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the default run")
    a = p.parse_args()
    cfg = compose(f"data.root={a.data_root}", *a.overrides)
    from pipeline.secagg.codec import CkksCodec
    from pipeline.secagg.keys import make_secret_context, server_context_bytes

    data = hospital_data(cfg, 0)
    plan = plan_for_run(cfg, data.num_train)
    model = build_model(cfg, data.channels, data.num_classes, data.image_size)
    start = get_flat(model).astype(np.float64)
    ctx = make_secret_context(cfg.encryption)
    codec = CkksCodec(ctx, server_context_bytes(ctx), cfg.encryption, int(cfg.federation.num_hospitals))
    ledger = PrivacyLedger.from_json(None, str(cfg.privacy.accountant)) if plan else None
    randomness = round_randomness(cfg.privacy, int(cfg.seed), 0, 1, 0)
    device = training.resolve_device(str(cfg.device))

    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    epochs = int(cfg.train.local_epochs)
    training.train_round(cfg, model, data.train, epochs, device, plan, ledger, 1, 0.0, randomness)
    if ledger is not None:
        ledger.epsilon(plan.delta)
    update = get_flat(model).astype(np.float64) - start
    payload = codec.encode(update, np.random.default_rng())
    summed = codec.decode(payload, 1, len(update))
    set_flat(model, (start + summed).astype(np.float32))
    validation_metrics(model, data.val, device)
    profile.disable()
    wall = time.perf_counter() - t0

    stats = pstats.Stats(profile)
    print(f"hospital 0, one round of the default run ({data.num_train} training images): {wall:.2f} s\n")
    print("| part | seconds (cumulative) |\n|---|---|")
    for group, seconds in grouped(stats).items():
        print(f"| {group} | {seconds:.2f} |")
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("cumulative").print_stats(a.top)
    print("\n```\n" + buf.getvalue().strip() + "\n```")


if __name__ == "__main__":
    main()
