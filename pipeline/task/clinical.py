"""Clinical metrics of a model on a split: what a clinical reader asks before the AUC.

Single-label binary data (e.g. PneumoniaMNIST, positive class 1): the operating point at a
probability threshold (sensitivity, specificity, PPV, NPV, F1 and the confusion matrix, predicted
positive when ``probability >= threshold``), the Youden threshold that maximises sensitivity +
specificity - 1, a stratified bootstrap 95% confidence interval of the ROC-AUC, and the expected
calibration error with its reliability-diagram bins. Multi-class and multi-label data: only the
bootstrap interval of the macro AUC (one-vs-rest over classes, or the mean over findings).

The threshold applied on the test split is chosen on validation data (:func:`resolve_threshold`
reads it from the run's metrics rows, ``val_threshold``), never on the test split itself. The
bootstrap is evaluation randomness seeded by the config's ``seed``, not privacy randomness.
Metrics come from scikit-learn; only the bootstrap AUC is rank-based (vectorised over resamples,
equal to ``roc_auc_score`` on each resample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_curve
from torch.utils.data import Dataset

from pipeline.task.metrics import classification_metrics
from pipeline.task.training import predict

CI_LEVEL = 0.95


def probabilities(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The model's probabilities: (N,) of the positive class for binary single-label data,
    (N, classes) softmax for multi-class data, (N, findings) sigmoid for multi-label data."""
    if labels.ndim == 2:
        return torch.sigmoid(logits.float()).numpy()
    probs = torch.softmax(logits.float(), dim=1).numpy()
    return probs[:, 1] if probs.shape[1] == 2 else probs


def is_binary(probs: np.ndarray) -> bool:
    """Whether ``probs`` (from :func:`probabilities`) are of single-label binary data."""
    return np.asarray(probs).ndim == 1


def youden_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (ROC curve); NaN when
    the labels do not vary. Predicted positive means ``probability >= threshold``."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    fpr, tpr, thresholds = roc_curve(labels, probs)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))  # the first threshold is +inf (nothing positive)


def operating_point(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, F1 and the confusion matrix at ``threshold``
    (NaN where a ratio has no denominator)."""
    labels = np.asarray(labels).astype(np.int64)
    pred = (np.asarray(probs) >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, pred, labels=[0, 1]).ravel())
    nan = np.nan
    return {
        "sensitivity": float(recall_score(labels, pred, pos_label=1, zero_division=nan)),
        "specificity": float(recall_score(labels, pred, pos_label=0, zero_division=nan)),
        "ppv": float(precision_score(labels, pred, pos_label=1, zero_division=nan)),
        "npv": float(precision_score(labels, pred, pos_label=0, zero_division=nan)),
        "f1": float(f1_score(labels, pred, pos_label=1, zero_division=nan)),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC-AUC of every row of ``scores`` (R, m) against the boolean ``positive`` (R, m), by the
    Mann-Whitney rank sum (ties count half); NaN for rows without both classes."""
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where(n_pos * n_neg > 0, auc, np.nan)


def _resample_index(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, N) row indices: stratified by class for single-label data (each class keeps
    its count), plain rows for multi-label data."""
    if labels.ndim == 2:
        return rng.integers(0, len(labels), size=(resamples, len(labels)))
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def _macro_auc(probs: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The AUC of each resample in ``index``: binary, one-vs-rest macro over the classes present,
    or the mean over findings whose labels vary (as :func:`pipeline.task.metrics.classification_metrics`)."""
    if is_binary(probs):
        return rank_auc(probs[index], labels[index] == 1)
    if labels.ndim == 2:
        per = [rank_auc(probs[index, j], labels[index, j] == 1) for j in range(labels.shape[1])]
    else:
        per = [rank_auc(probs[index, c], labels[index] == c) for c in np.unique(labels)]
    stacked = np.stack(per)
    finite = np.isfinite(stacked)
    present = finite.sum(axis=0)
    return np.where(present > 0, np.where(finite, stacked, 0.0).sum(axis=0) / np.maximum(present, 1), np.nan)


def bootstrap_auc_ci(
    probs: np.ndarray, labels: np.ndarray, resamples: int, seed: int, level: float = CI_LEVEL
) -> list[float] | None:
    """Percentile bootstrap interval of the (macro) ROC-AUC; None with 0 resamples or no AUC.

    Single-label data are resampled within each class (positives and negatives separately), so
    every resample has the test split's class counts; multi-label data by rows.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if resamples <= 0 or len(labels) == 0:
        return None
    rng = np.random.default_rng(seed)
    aucs = _macro_auc(probs, labels, _resample_index(labels, resamples, rng))
    aucs = aucs[np.isfinite(aucs)]
    if len(aucs) == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return [float(low), float(high)]


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width probability bins and the reliability
    diagram's bins (binned as scikit-learn's ``calibration_curve(strategy="uniform")``).

    ECE = sum over bins of (count / N) * |fraction of positives - mean probability|.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], probs)
    counts = np.bincount(ids, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_prob = np.bincount(ids, weights=probs, minlength=bins) / counts
        frac_pos = np.bincount(ids, weights=labels, minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / counts.sum() * np.abs(frac_pos[filled] - mean_prob[filled])))
    reliability = [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(counts[i]),
            "mean_probability": float(mean_prob[i]) if filled[i] else None,
            "fraction_positive": float(frac_pos[i]) if filled[i] else None,
        }
        for i in range(bins)
    ]
    return {"ece": ece if counts.sum() else float("nan"), "reliability": reliability}


def clinical_report(
    probs: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    threshold_source: str,
    cfg_eval: Any,
    seed: int,
) -> dict[str, Any]:
    """The clinical metrics of ``probs`` (from :func:`probabilities`) as a JSON-able dict.

    Binary single-label data: ``auc_ci``, ``threshold`` and ``threshold_source``, the operating
    point (:func:`operating_point`), ``ece`` and the ``reliability`` bins. Other data: ``auc_ci``
    of the macro AUC only, and ``clinical_note`` saying so. ``cfg_eval`` is the config's ``eval``
    group (``bootstrap``, ``calibration_bins``); ``threshold`` None on binary data means 0.5.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    resamples = int(cfg_eval.bootstrap)
    report: dict[str, Any] = {
        "auc_ci": bootstrap_auc_ci(probs, labels, resamples, seed),
        "auc_ci_method": (
            f"{CI_LEVEL:.0%} percentile bootstrap, {resamples} resamples "
            f"({'by rows' if labels.ndim == 2 else 'stratified by class'}), seed {seed}"
            if resamples
            else "none (eval.bootstrap=0)"
        ),
    }
    if not is_binary(probs):
        kind = "multi-label" if labels.ndim == 2 else "multi-class"
        report["clinical_note"] = (
            f"{kind} data: only the bootstrap interval of the macro AUC; no operating point or calibration"
        )
        return report
    if threshold is None or not math.isfinite(threshold):
        threshold, threshold_source = 0.5, f"0.5 (no threshold available: {threshold_source})"
    cal = calibration(probs, labels, int(cfg_eval.calibration_bins))
    report.update(threshold=float(threshold), threshold_source=threshold_source)
    report.update(operating_point(probs, labels, float(threshold)))
    report.update(ece=cal["ece"], reliability=cal["reliability"])
    return report


def resolve_threshold(
    cfg_eval: Any, rows: Sequence[dict[str, Any]], data: str = "the hospitals' validation data"
) -> tuple[float | None, str]:
    """The test threshold and where it came from: ``eval.threshold`` when it is a number, else the
    ``val_threshold`` (Youden on ``data``) of the last completed round in ``rows`` (metrics rows);
    None (with the reason) when that round has none."""
    setting = cfg_eval.threshold
    if not isinstance(setting, str):
        return float(setting), f"fixed by eval.threshold={float(setting):g}"
    if not rows:
        return None, "no completed round"
    last = rows[-1]
    value = last.get("val_threshold")
    if value is None or not math.isfinite(float(value)):
        return None, f"round {last.get('round')} has no val_threshold"
    return float(value), f"youden on {data}, round {last.get('round')}"


def validation_metrics(model: torch.nn.Module, dataset: Dataset, device: torch.device) -> dict[str, Any]:
    """:func:`~pipeline.task.metrics.classification_metrics` of ``model`` on ``dataset`` plus
    ``threshold``: its Youden threshold there (None unless the data are binary single-label and
    both classes occur)."""
    logits, labels = predict(model, dataset, device)
    metrics = classification_metrics(logits, labels, getattr(dataset, "class_names", None))
    probs = probabilities(logits, labels)
    threshold = youden_threshold(probs, labels.numpy()) if is_binary(probs) and len(labels) else float("nan")
    metrics["threshold"] = threshold if math.isfinite(threshold) else None
    return metrics


def final_model_report(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    threshold: tuple[float | None, str],
    cfg: Any,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The final model's test dict (auc, accuracy, mcc, loss, per_label and the
    :func:`clinical_report` keys) at ``threshold`` (value, source), with the probabilities and
    labels it was computed from (for the plots)."""
    logits, labels = predict(model, dataset, device)
    metrics = classification_metrics(logits, labels, getattr(dataset, "class_names", None))
    probs, truth = probabilities(logits, labels), labels.numpy()
    metrics.update(clinical_report(probs, truth, threshold[0], threshold[1], cfg.eval, int(cfg.seed)))
    return metrics, probs, truth
