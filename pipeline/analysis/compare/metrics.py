"""The numbers of one run: test metrics (each finding's AUC for multi-label runs), epsilon, rounds,
time, bytes and encryption overhead from ``summary.json`` and ``metrics.csv``, the DP mechanism
from ``privacy.json`` (noise multiplier, randomness source, lifetime epsilon), and the attack
scores from ``attack/report.json`` when the run was attacked (``scripts/attack.py``).

Beside the columns, :func:`run_metrics` gives ``test_auc_ci`` (the test AUC's bootstrap 95%
interval, or None), which the report shows in the ``test_auc`` cell."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.analysis.compare.runs import Run

METRIC_COLUMNS = [
    "val_auc",  # the hospitals' validation AUC after the last round: what to tune on, never the test split
    "test_auc",
    "test_accuracy",
    "test_mcc",
    "test_auc_per_label",
    "epsilon",
    "noise_multiplier",
    "randomness",
    "lifetime_epsilon",
    "rounds",
    "seconds",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "encryption_overhead_pct",
    "attack_ssim_plaintext",
    "attack_ssim_dp",
    "mia_auc",
]
ATTACK_REPORT = Path("attack") / "report.json"  # written by scripts/attack.py
PRIVACY_REPORT = "privacy.json"  # written by the server, from what each hospital reports
ATTACK_COLUMNS = ("attack_ssim_plaintext", "attack_ssim_dp", "mia_auc")


def mean_present(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not ``None``; ``None`` when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def max_epsilon(summary: dict[str, Any]) -> float | None:
    """Largest epsilon spent by any hospital; ``None`` without DP."""
    eps = summary.get("epsilon") or {}
    values = [float(v) for v in eps.values() if v is not None] if isinstance(eps, dict) else []
    return max(values) if values else None


def per_label_auc(test: dict[str, Any]) -> str | None:
    """A multi-label run's test AUC of every finding, as ``name auc`` pairs; None for single-label runs."""
    per_label = test.get("per_label") or {}
    shown = [f"{name} {m['auc']:.4f}" if m.get("auc") is not None else f"{name} -" for name, m in per_label.items()]
    return ", ".join(shown) or None


def run_metrics(run: Run) -> dict[str, float | int | str | None]:
    """The metric columns of one run (see :data:`METRIC_COLUMNS`) and ``test_auc_ci``."""
    test = run.summary.get("test") or {}
    rows = run.rows
    overhead = None
    per_round = [
        sum(r[k] for k in ("aggregate_seconds", "encode_seconds", "decode_seconds") if r.get(k) is not None)
        for r in rows
        if any(r.get(k) is not None for k in ("aggregate_seconds", "encode_seconds", "decode_seconds"))
    ]
    seconds = mean_present(r.get("seconds") for r in rows)
    if per_round and seconds:
        overhead = 100.0 * (sum(per_round) / len(per_round)) / seconds
    rounds = run.summary.get("rounds_completed")
    attack = attack_metrics(run.path)
    dp = privacy_metrics(run.path)
    return {
        "val_auc": (run.summary.get("final_validation") or {}).get("val_auc"),
        "test_auc": test.get("auc"),
        "test_auc_ci": tuple(test["auc_ci"]) if test.get("auc_ci") else None,
        "test_accuracy": test.get("accuracy"),
        "test_mcc": test.get("mcc"),
        "test_auc_per_label": per_label_auc(test),
        "epsilon": max_epsilon(run.summary),
        **dp,
        "rounds": int(rounds) if rounds is not None else (len(rows) or None),
        "seconds": run.summary.get("seconds"),
        "bytes_up_per_round": mean_present(r.get("bytes_up") for r in rows),
        "bytes_down_per_round": mean_present(r.get("bytes_down") for r in rows),
        "encryption_overhead_pct": overhead,
        **attack,
    }


def privacy_metrics(folder: Path) -> dict[str, Any]:
    """From privacy.json: the largest noise multiplier and lifetime epsilon, and the randomness source(s)."""
    try:
        hospitals = json.loads((folder / PRIVACY_REPORT).read_text()).get("hospitals") or {}
    except (OSError, ValueError):
        hospitals = {}
    reports = list(hospitals.values())
    noise = [r["noise_multiplier"] for r in reports if r.get("noise_multiplier") is not None]
    lifetime = [r["lifetime_epsilon"] for r in reports if r.get("lifetime_epsilon") is not None]
    kinds = sorted({str(r.get("randomness")) for r in reports if r.get("randomness")})
    return {
        "noise_multiplier": max(noise) if noise else None,
        "randomness": "/".join(kinds) if kinds else None,
        "lifetime_epsilon": max(lifetime) if lifetime else None,
    }


def attack_metrics(folder: Path) -> dict[str, float | None]:
    """SSIM of the inversion attack (plaintext, DP) and membership-inference AUC, when attacked."""
    try:
        report = json.loads((folder / ATTACK_REPORT).read_text())
    except (OSError, ValueError):
        report = {}
    inversion, membership = report.get("inversion") or {}, report.get("membership") or {}
    return {
        "attack_ssim_plaintext": (inversion.get("plaintext") or {}).get("ssim"),
        "attack_ssim_dp": (inversion.get("dp") or {}).get("ssim"),
        "mia_auc": membership.get("auc"),
    }


def is_encrypted(run: Run) -> bool:
    """Whether ``run`` encrypted its updates (``summary.json``, else its config)."""
    if "encrypted" in run.summary:
        return bool(run.summary["encrypted"])
    return bool(run.config.get("encryption.enabled"))


def is_private(run: Run) -> bool:
    """Whether ``run`` used DP (its config enables privacy, or it spent some epsilon)."""
    return bool(run.config.get("privacy.enabled")) or max_epsilon(run.summary) is not None
