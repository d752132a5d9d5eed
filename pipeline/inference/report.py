"""What inference writes into ``RUN_DIR/inference/``: predictions, summary and the encrypted-inference report.

* ``predictions.csv``: one row per image: ``path`` (files) or ``index`` (a split), ``prob_<class>``
  per class (softmax of the logits), ``predicted`` (class name), ``label`` (class name, empty when
  unknown) and ``encrypted`` (``true`` when the logits were computed on ciphertexts and decrypted
  by the data owner, ``false`` for clear inference).
* ``summary.json``: the images, where they came from, the predicted classes and, when labels are
  known, ROC-AUC / accuracy / MCC / loss (:func:`pipeline.task.metrics.classification_metrics`).
* ``report.json`` and ``report.md`` (encrypted inference): agreement of the encrypted and the
  plaintext predicted classes, the largest logit difference, test metrics of both, seconds per
  image (encrypt, evaluate, decrypt), bytes per query each way and the one-time size of the
  evaluation keys.

Every file is written whole with :func:`pipeline.reporting.atomic.write_atomic`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from pipeline.inference.clear import INFERENCE_DIR, UNKNOWN, InputImages, RunModel
from pipeline.inference.session import EncryptedRun
from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.recorder import write_json
from pipeline.task.metrics import classification_metrics

PREDICTIONS_CSV = "predictions.csv"
SUMMARY_JSON = "summary.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

WHAT_EACH_PARTY_LEARNS = {
    "data_owner": (
        "the logits of its own images: they say something about the model (repeated queries could "
        "approximate it), and the public architecture and preprocessing it encrypted for"
    ),
    "model_owner": (
        "nothing about the image or the result: it holds ciphertexts and an evaluation context without "
        "the secret key; it sees how many queries arrive, their sizes and when"
    ),
}


def predictions_csv(run: RunModel, inputs: InputImages, logits: torch.Tensor, encrypted: bool) -> str:
    """The rows of ``predictions.csv`` (see the module docstring)."""
    probs = torch.softmax(logits.double(), dim=1).numpy()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([inputs.id_column, *(f"prob_{c}" for c in run.class_names), "predicted", "label", "encrypted"])
    for image, p, label in zip(inputs.ids, probs, inputs.labels, strict=True):
        known = run.class_names[int(label)] if label != UNKNOWN else ""
        row = [f"{v:.6f}" for v in p]
        writer.writerow([image, *row, run.class_names[int(p.argmax())], known, "true" if encrypted else "false"])
    return out.getvalue()


def labelled_metrics(inputs: InputImages, logits: torch.Tensor) -> dict[str, float] | None:
    """Metrics over the images whose label is known (None when none is)."""
    known = inputs.known
    if not known.any():
        return None
    return classification_metrics(logits[torch.from_numpy(known)], torch.from_numpy(inputs.labels[known]))


def summary(run: RunModel, inputs: InputImages, logits: torch.Tensor, encrypted: bool) -> dict[str, Any]:
    """``summary.json``: what was predicted, and how well where labels are known."""
    predicted = logits.argmax(dim=1).numpy()
    return {
        "run_dir": str(run.run_dir),
        "model": str(run.cfg.model._target_),
        "source": inputs.source,
        "images": len(inputs),
        "encrypted": encrypted,
        "labelled": int(inputs.known.sum()),
        "predicted": {c: int((predicted == i).sum()) for i, c in enumerate(run.class_names)},
        "metrics": labelled_metrics(inputs, logits),
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def encrypted_report(run: RunModel, inputs: InputImages, plain: torch.Tensor, enc: EncryptedRun) -> dict[str, Any]:
    """``report.json``: the encrypted predictions against the plaintext ones, and their costs."""
    encrypted = torch.from_numpy(enc.logits).float()
    q = enc.queries
    per_image = {
        kind: _median([getattr(c, f"{kind}_seconds") / c.images for c in q])
        for kind in ("encrypt", "evaluate", "decrypt")
    }
    per_image["total"] = sum(per_image.values())
    diff = np.abs(enc.logits - plain.double().numpy())
    return {
        "run_dir": str(run.run_dir),
        "model": str(run.cfg.model._target_),
        "source": inputs.source,
        "images": len(inputs),
        "layout": enc.layout,
        "images_per_query": max(c.images for c in q),
        "queries": len(q),
        "ckks": {**asdict(enc.params), "depth_used": enc.spec.depth, "slots": enc.params.slots},
        "agreement": float((encrypted.argmax(1) == plain.argmax(1)).double().mean()),
        "disagreements": int((encrypted.argmax(1) != plain.argmax(1)).sum()),
        "max_logit_difference": float(diff.max()),
        "median_logit_difference": float(np.median(diff)),
        "metrics_encrypted": labelled_metrics(inputs, encrypted),
        "metrics_plaintext": labelled_metrics(inputs, plain),
        "seconds_per_image": per_image,
        "seconds_per_query": {
            "encrypt": _median([c.encrypt_seconds for c in q]),
            "evaluate": _median([c.evaluate_seconds for c in q]),
            "decrypt": _median([c.decrypt_seconds for c in q]),
        },
        "bytes_per_query": {
            "up": int(_median([c.bytes_up for c in q])),
            "down": int(_median([c.bytes_down for c in q])),
        },
        "bytes_per_image": {
            "up": _median([c.bytes_up / c.images for c in q]),
            "down": _median([c.bytes_down / c.images for c in q]),
        },
        "evaluation_key_bytes": enc.evaluation_key_bytes,
        "keygen_seconds": enc.keygen_seconds,
        "model_owner_has_secret_key": enc.model_owner_has_secret_key,
        "wall_seconds": enc.wall_seconds,
        "what_each_party_learns": WHAT_EACH_PARTY_LEARNS,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report as Markdown."""
    enc, plain = report["metrics_encrypted"] or {}, report["metrics_plaintext"] or {}
    s, per_q = report["seconds_per_image"], report["seconds_per_query"]
    ckks = report["ckks"]
    lines = [
        "# Encrypted inference",
        "",
        f"Run `{report['run_dir']}` ({report['model']}), {report['images']} images ({report['source']}); "
        f"layout `{report['layout']}`, {report['images_per_query']} image(s) per query, {report['queries']} queries.",
        f"CKKS: degree {ckks['poly_modulus_degree']}, primes {list(ckks['coeff_mod_bit_sizes'])} bits, scale 2^"
        f"{ckks['scale_bits']}; {ckks['depth_used']} of {len(ckks['coeff_mod_bit_sizes']) - 2} levels used.",
        "",
        "| | encrypted | plaintext |",
        "|---|---|---|",
        f"| ROC-AUC | {_fmt(enc.get('auc'))} | {_fmt(plain.get('auc'))} |",
        f"| accuracy | {_fmt(enc.get('accuracy'))} | {_fmt(plain.get('accuracy'))} |",
        "",
        f"Predicted classes agree on {100 * report['agreement']:.2f}% of the images "
        f"({report['disagreements']} differ); largest logit difference {report['max_logit_difference']:.2e} "
        f"(median {report['median_logit_difference']:.2e}).",
        "",
        "| cost | per image | per query |",
        "|---|---|---|",
        f"| encrypt (data owner) | {s['encrypt']:.3f} s | {per_q['encrypt']:.3f} s |",
        f"| evaluate (model owner) | {s['evaluate']:.3f} s | {per_q['evaluate']:.3f} s |",
        f"| decrypt (data owner) | {s['decrypt']:.4f} s | {per_q['decrypt']:.4f} s |",
        f"| bytes up (query) | {_mib(report['bytes_per_image']['up'])} | {_mib(report['bytes_per_query']['up'])} |",
        f"| bytes down (result) | {_mib(report['bytes_per_image']['down'])} | "
        f"{_mib(report['bytes_per_query']['down'])} |",
        "",
        f"One-time evaluation keys (data owner -> model owner, no secret key): {_mib(report['evaluation_key_bytes'])}, "
        f"made in {report['keygen_seconds']:.1f} s. The model owner's context holds a secret key: "
        f"{str(report['model_owner_has_secret_key']).lower()}.",
        "",
        f"- The data owner learns {report['what_each_party_learns']['data_owner']}.",
        f"- The model owner learns {report['what_each_party_learns']['model_owner']}.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    run: RunModel, inputs: InputImages, logits: torch.Tensor, encrypted: bool, report: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write predictions.csv and summary.json (and report.json/.md when given) into ``RUN_DIR/inference/``.

    Returns the summary.
    """
    out = run.run_dir / INFERENCE_DIR
    write_atomic(out / PREDICTIONS_CSV, predictions_csv(run, inputs, logits, encrypted))
    result = summary(run, inputs, logits, encrypted)
    write_json(out / SUMMARY_JSON, result)
    if report is not None:
        write_json(out / REPORT_JSON, report)
        write_atomic(out / REPORT_MD, report_markdown(report))
    return result
