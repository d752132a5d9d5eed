"""Classification metrics shared by every mode: ROC-AUC (MONAI), accuracy, MCC, loss.

Single-label data (class indices): one-vs-rest ROC-AUC over softmax outputs, accuracy and MCC
of the arg-max, cross-entropy. Multi-label data (multi-hot rows): every finding's ROC-AUC,
accuracy and MCC over its sigmoid output (threshold 0.5), binary cross-entropy; the headline
``auc`` is the macro mean of the findings' AUCs (findings whose test labels do not vary have
none), ``accuracy`` and ``mcc`` are means over findings, and ``per_label`` holds each finding's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc


def matthews_corrcoef(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004); 0 when undefined.

    Written out because scikit-learn is not otherwise a dependency and MONAI's MCC is per class.
    """
    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cm, (labels, predicted), 1)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / denom) if denom > 0 else 0.0


def _binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC-AUC of one binary task; NaN when the labels do not vary."""
    if len(torch.unique(labels)) < 2:
        return float("nan")
    return float(compute_roc_auc(scores, labels))


def multi_label_metrics(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Per-finding ROC-AUC, accuracy and MCC over sigmoid outputs, their means, and the BCE loss."""
    y = labels.float()
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)) if len(y) else float("nan")
    probs = torch.sigmoid(logits.float())
    truth, pred = y.numpy().astype(np.int64), (probs >= 0.5).numpy().astype(np.int64)
    per_label = {}
    for j, name in enumerate(names):
        per_label[str(name)] = {
            "auc": _binary_auc(probs[:, j], y[:, j]),
            "accuracy": float((truth[:, j] == pred[:, j]).mean()) if len(y) else float("nan"),
            "mcc": matthews_corrcoef(truth[:, j], pred[:, j], 2),
            "positives": int(truth[:, j].sum()),
        }
    aucs = [m["auc"] for m in per_label.values() if not np.isnan(m["auc"])]
    return {
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "accuracy": float(np.mean([m["accuracy"] for m in per_label.values()])),
        "mcc": float(np.mean([m["mcc"] for m in per_label.values()])),
        "loss": loss,
        "per_label": per_label,
    }


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """ROC-AUC (one-vs-rest macro for > 2 classes), accuracy, MCC and cross-entropy of ``logits``.

    ``labels`` of shape (N, findings) are multi-label (see :func:`multi_label_metrics`; ``names``
    names the findings in ``per_label``, by default ``label_<j>``).
    """
    num_classes = logits.shape[1]
    if labels.ndim == 2:
        return multi_label_metrics(logits, labels, names or [f"label_{j}" for j in range(num_classes)])
    loss = float(torch.nn.functional.cross_entropy(logits, labels)) if len(labels) else float("nan")
    probs = torch.softmax(logits.float(), dim=1)
    pred = probs.argmax(dim=1)
    y, yhat = labels.numpy(), pred.numpy()
    if len(np.unique(y)) < 2:
        auc = float("nan")
    elif num_classes == 2:
        auc = float(compute_roc_auc(probs[:, 1], labels))
    else:
        onehot = torch.nn.functional.one_hot(labels, num_classes)
        auc = float(compute_roc_auc(probs, onehot, average="macro"))
    return {
        "auc": auc,
        "accuracy": float((yhat == y).mean()) if len(y) else float("nan"),
        "mcc": matthews_corrcoef(y, yhat, num_classes),
        "loss": loss,
    }
