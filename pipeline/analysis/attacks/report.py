"""The attack report: ``report.json``, ``report.md`` and the ``inversion_grid.png`` of true images
and reconstructions, written into ``RUN_DIR/attack/``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

ATTACK_DIR = "attack"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
GRID_PNG = "inversion_grid.png"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def chance_auc_error(members: int, non_members: int) -> float:
    """The standard error of the ROC-AUC of an attacker at chance level (AUC 0.5) on ``members``
    vs ``non_members`` (Hanley & McNeil 1982 under the null: sqrt((n1 + n0 + 1) / (12 n1 n0)))."""
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def membership_verdict(m: dict[str, Any]) -> str:
    """What a membership result's AUC says: within twice the sampling error of 0.5 (cannot tell
    members apart), clearly above (by how much), or clearly below (members look less member-like)."""
    auc, n1, n0 = m.get("auc"), m.get("members") or 0, m.get("non_members") or 0
    if auc is None or not math.isfinite(auc) or not n1 or not n0:
        return "no AUC was measured."
    se = chance_auc_error(n1, n0)
    z = (auc - 0.5) / se
    where = f"AUC {auc:.3f} against 0.5 for guessing (sampling error ±{2 * se:.3f} at {n1} vs {n0})"
    if abs(z) < 2:
        return f"{where}: within the sampling error of 0.5; the attacker cannot tell members from non-members."
    if z > 0:
        adv = m.get("advantage")
        return (
            f"{where}: {auc - 0.5:.3f} above chance ({z:.1f} standard errors); the attacker tells members from "
            f"non-members better than chance: it ranks a random member above a random non-member {auc:.0%} of "
            "the time instead of 50%"
            + (
                f", and its best loss threshold flags {adv:.0%} more of the members than of the non-members."
                if adv
                else "."
            )
        )
    return (
        f"{where}: {0.5 - auc:.3f} below chance ({-z:.1f} standard errors); members have the higher losses, so "
        "the loss does not single them out (no sign of memorisation; the two sets differ in another way)."
    )


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    eps = report.get("run_epsilon")
    parts = [
        "# Privacy attacks",
        "",
        f"Run `{report['run_dir']}`: DP {'on' if report['run_private'] else 'off'}"
        + (f" (epsilon spent {eps:.3f})" if eps is not None else "")
        + f", encryption {'on' if report['run_encrypted'] else 'off'}. Attacked hospital: {report['hospital']}.",
    ]
    inv = report.get("inversion")
    if inv:
        dp = inv["dp"]
        enc = inv["encrypted"]
        parts += [
            "",
            "## Gradient inversion",
            "",
            f"{inv['attack']}; {inv['iterations']} iterations, TV weight {inv['tv_weight']:g}, "
            f"batch of {inv['batch_size']} (labels {inv['labels']}).",
            f"Threat model: {inv['threat_model']}.",
            "",
            "| setting | what the server sees | SSIM | PSNR (dB) |",
            "|---|---|---|---|",
            f"| plaintext | float32 update (no DP) | {_fmt(inv['plaintext']['ssim'])} | "
            f"{_fmt(inv['plaintext']['psnr'], 2)} |",
            f"| dp | float32 update, DP-SGD (noise multiplier {dp['noise_multiplier']:.3f}, clip "
            f"{dp['max_grad_norm']:g}, target epsilon {dp['target_epsilon']:g}) | {_fmt(dp['ssim'])} | "
            f"{_fmt(dp['psnr'], 2)} |",
            f"| encrypted | {enc['chunks']} CKKS ciphertext chunks ({enc['payload_bytes']} bytes) | n/a | n/a |",
            "| collusion | server + one hospital: the victim's reply decrypted with the shared key, "
            f"the masks of honest hospitals left | {_fmt(inv['collusion']['ssim'])} | "
            f"{_fmt(inv['collusion']['psnr'], 2)} |",
            f"| no information (baseline): the attack on a uniformly random update | | "
            f"{_fmt(inv['no_information_baseline']['ssim'])} | {_fmt(inv['no_information_baseline']['psnr'], 2)} |",
            f"| random images (baseline) | | {_fmt(inv['random_baseline']['ssim'])} | "
            f"{_fmt(inv['random_baseline']['psnr'], 2)} |",
            f"| mean training image (baseline) | | {_fmt(inv['mean_image_baseline']['ssim'])} | "
            f"{_fmt(inv['mean_image_baseline']['psnr'], 2)} |",
            "",
            f"- DP plan: {dp['plan_source']}. Per-coordinate noise std of the batch gradient "
            f"{dp['noise_std_per_coordinate']:.3g}, against a clean gradient of norm {dp['clean_gradient_norm']:.3g}.",
            f"- Encrypted: {enc['reason']} Server decryption attempt: `{enc['server_decrypt_error']}`. "
            f"The key holders decode the same payload to within {enc['key_holder_max_abs_error']:.2g} "
            f"(quantisation; {enc['parameters_source']}).",
            f"- Collusion: {inv['collusion']['threat_model']} Masks left on it: "
            f"{', '.join(inv['collusion']['masks_left'])}; the estimate's correlation with the true update is "
            f"{inv['collusion']['estimate_correlation']:.3f}.",
            "- SSIM/PSNR after matching each reconstruction to the true image of the same label it resembles most; "
            "the random baseline is the attack's own starting point.",
            "",
            f"![true images and reconstructions]({GRID_PNG})",
        ]
    mia = report.get("membership")
    if mia:
        parts += [
            "",
            "## Membership inference",
            "",
            f"{mia['attack']} against {mia['model']}: {mia['members']} members ({mia['member_set']}) vs "
            f"{mia['non_members']} non-members ({mia['non_member_set']}).",
            "",
            "| non-members | count | AUC | advantage (max TPR-FPR) | TPR at 1% FPR | member loss | non-member loss |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in (mia, mia.get("same_distribution")):
            if m:
                parts.append(
                    f"| {m['non_member_set']} | {m['members']} vs {m['non_members']} | {_fmt(m['auc'])} | "
                    f"{_fmt(m['advantage'])} | {_fmt(m['tpr_at_1pct_fpr'])} | {_fmt(m['member_loss'], 4)} | "
                    f"{_fmt(m['non_member_loss'], 4)} |"
                )
        parts.append("")
        parts += [f"- {m['non_member_set']}: {membership_verdict(m)}" for m in (mia, mia.get("same_distribution")) if m]
        parts += [
            "",
            "The first row is the headline (`membership.auc`)"
            + (
                "; the second uses non-members drawn from the same split as the members, so that a train/test "
                "distribution shift cannot inflate the AUC"
                if mia.get("same_distribution")
                else ""
            )
            + ". Compare the reports of runs with and without DP for the trend.",
        ]
    parts.append("")
    return "\n".join(parts)


def save_grid(images: dict[str, torch.Tensor], report: dict[str, Any], path: Path) -> Path:
    """PNG grid: true images, reconstructions (plaintext, DP), random start; a note for encryption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inv = report["inversion"]
    rows = [
        ("true", "true images"),
        ("plaintext", f"no DP\nSSIM {inv['plaintext']['ssim']:.2f}"),
        ("dp", f"DP (eps {inv['dp']['target_epsilon']:g})\nSSIM {inv['dp']['ssim']:.2f}"),
        ("collusion", f"server + 1 hospital\nSSIM {inv['collusion']['ssim']:.2f}"),
        ("random", f"random start\nSSIM {inv['random_baseline']['ssim']:.2f}"),
    ]
    cols = len(images["true"])
    labels = inv.get("labels") or [None] * cols
    fig, axes = plt.subplots(len(rows) + 1, cols, figsize=(1.5 * cols + 1.2, 1.55 * len(rows) + 0.9), squeeze=False)
    for r, (key, label) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = images[key][c]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if key == "true":
                ax.set_title(f"label {labels[c]}", fontsize=7)
            else:
                per_image = inv[key if key != "random" else "random_baseline"]["ssim_per_image"]
                ax.set_xlabel(f"SSIM {per_image[c]:.2f}", fontsize=6, labelpad=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    for c in range(cols):
        axes[-1][c].axis("off")
    enc = inv["encrypted"]
    error = enc["server_decrypt_error"]
    outcome = (
        f"decrypting fails ({error.split(':')[0]}):\nno gradient, nothing to invert (no reconstruction)"
        if error
        else "decrypting did NOT fail: check the key handling"
    )
    fig.text(
        0.02,
        0.5 / (len(rows) + 1),
        f"CKKS encrypted: the server gets {enc['chunks']} ciphertext chunks ({enc['payload_bytes']} bytes)\n"
        f"and {'the secret key' if enc.get('server_has_secret_key') else 'no key'}; {outcome}",
        fontsize=7,
        va="center",
    )
    fig.subplots_adjust(left=0.16, right=0.98, top=0.95, bottom=0.02, hspace=0.35, wspace=0.08)
    from pipeline.reporting.atomic import write_figure

    write_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict[str, Any], images: dict[str, torch.Tensor], out: Path) -> list[Path]:
    """Write report.json, report.md and (with an inversion) inversion_grid.png into ``out``."""
    from pipeline.reporting.atomic import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    written = [out / REPORT_JSON, out / REPORT_MD]
    write_atomic(written[0], json.dumps(_finite(report), indent=2) + "\n")
    write_atomic(written[1], report_markdown(report))
    if "inversion" in report:
        written.append(save_grid(images, report, out / GRID_PNG))
    return written
