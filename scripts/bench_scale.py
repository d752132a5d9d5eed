"""Scale and the privacy tax: round time and peak memory for many simulated hospitals.

    python scripts/bench_scale.py --data-root ../shared/data [--hospitals 3 10 30 100] [--rounds 2]

Each row is one real run of ``python -m pipeline.run`` (DP-SGD + CKKS, the default model
``scatter_cnn`` unless ``--model``, e.g. ``--model cnn`` for the figures measured before it):
mean seconds per round (metrics.csv) and the peak resident memory of the whole simulation (the
run's process tree, sampled from /proc every 0.2 s), and how far the round's ``phase_*`` columns
are from adding up to its ``seconds``. ``--tax`` adds the privacy tax: the default 3-hospital
private run and its plaintext, non-DP twin (same data, model, rounds, seed), run alternately
``--pairs`` times; it reports each pair's ratio, their median and spread, and where a round's
seconds go in each. Prints Markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.reporting.recorder import METRICS_FILE, read_metrics
from pipeline.reporting.timing import PHASE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def measured_run(overrides: list[str]) -> dict:
    """Run the pipeline once; return wall seconds, mean round seconds and peak tree RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "pipeline.run",
            f"run_dir={run_dir}",
            f"federation.hospital_dir={tmp}/h",
            *overrides,
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                time.sleep(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        err, _ = proc.communicate()  # the console (the error line comes last)
        wall = time.perf_counter() - start
        watcher.join()
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({' '.join(overrides)}): {err.strip().splitlines()[-1:]}")
        rounds = read_metrics(run_dir / METRICS_FILE)
        summary = json.loads((run_dir / "summary.json").read_text())
    phases = {c: sum(float(r[c] or 0.0) for r in rounds) / len(rounds) for c in PHASE_COLUMNS}
    gap = max(abs(sum(float(r[c] or 0.0) for c in PHASE_COLUMNS) - float(r["seconds"])) for r in rounds)
    return {
        "wall": wall,
        "phases": phases,
        "phase_gap": gap,
        "round_s": sum(float(r["seconds"]) for r in rounds) / len(rounds),
        "contributed": min(int(r["hospitals"]) for r in rounds),
        "dropped": sum(int(r["dropped"]) for r in rounds),
        "peak_gib": peak[0] / 2**30,
        "auc": (summary.get("test") or {}).get("auc"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--hospitals", nargs="+", type=int, default=[3, 10, 30, 100])
    p.add_argument("--model", default="scatter_cnn", help="conf/model/ option (default: the default model)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tax", action="store_true", help="also measure the privacy tax (3 hospitals, default rounds)")
    p.add_argument("--pairs", type=int, default=3, help="--tax: private/plaintext pairs, run alternately")
    a = p.parse_args()
    base = [f"data.root={a.data_root}", f"model={a.model}"]
    print(
        "| model | hospitals | contributed (min over rounds) | dropped | s/round | s/round/hospital | peak RSS (GiB) "
        "| phases off by (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in a.hospitals:
        extra = [f"federation.num_hospitals={k}", f"federation.min_hospitals={k}", f"federation.rounds={a.rounds}"]
        extra.append("train.local_epochs=1")
        if k > 10:  # keep 4+ bits per value: fewer, wider fields per slot (see conf/encryption/ckks.yaml)
            per_slot, bits = (4, 10) if k <= 30 else (3, 12)  # over 30: what the config check suggests
            extra += [f"encryption.fields_per_slot={per_slot}", f"encryption.field_bits={bits}"]
            extra.append("encryption.global_scale_bits=14")
        r = measured_run(base + extra)
        print(
            f"| {a.model} | {k} | {r['contributed']} | {r['dropped']} | {r['round_s']:.1f} | {r['round_s'] / k:.2f} "
            f"| {r['peak_gib']:.2f} | {r['phase_gap']:.4f} |",
            flush=True,
        )
    if a.tax:
        privacy_tax(base, a.pairs)


def privacy_tax(base: list[str], pairs: int) -> None:
    """The default private run and its plaintext twin, alternately ``pairs`` times: ratios, median, spread."""
    runs: list[tuple[dict, dict]] = []
    print("\n| pair | DP + CKKS wall s | twin wall s | wall ratio | s/round | twin s/round | per-round ratio | AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for i in range(pairs):
        private = measured_run(base)
        plain = measured_run(base + ["privacy=none", "encryption=none"])
        runs.append((private, plain))
        print(
            f"| {i + 1} | {private['wall']:.1f} | {plain['wall']:.1f} | {private['wall'] / plain['wall']:.2f} "
            f"| {private['round_s']:.2f} | {plain['round_s']:.2f} | {private['round_s'] / plain['round_s']:.2f} "
            f"| {private['auc']:.3f} / {plain['auc']:.3f} |",
            flush=True,
        )
    wall = [p["wall"] / q["wall"] for p, q in runs]
    per_round = [p["round_s"] / q["round_s"] for p, q in runs]
    print(
        f"\nprivacy tax, median of {pairs} alternating pairs: {statistics.median(wall):.2f}x wall "
        f"(spread {min(wall):.2f}-{max(wall):.2f}), {statistics.median(per_round):.2f}x per round "
        f"(spread {min(per_round):.2f}-{max(per_round):.2f}); private run wall median "
        f"{statistics.median(p['wall'] for p, _ in runs):.1f} s"
    )
    print("\n| phase (mean s per round) | DP + CKKS | plaintext twin |\n|---|---|---|")
    for c in PHASE_COLUMNS:
        mine = statistics.mean(p["phases"][c] for p, _ in runs)
        twin = statistics.mean(q["phases"][c] for _, q in runs)
        print(f"| {c.removeprefix('phase_')} | {mine:.2f} | {twin:.2f} |")
    gap = max(r["phase_gap"] for pair in runs for r in pair)
    print(f"\nlargest |sum of phase columns - seconds| over all rounds: {gap:.4f} s")


if __name__ == "__main__":
    main()
