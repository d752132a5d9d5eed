"""Classification metrics shared by every mode: ROC-AUC (MONAI), accuracy, MCC, loss."""

from __future__ import annotations

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


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """ROC-AUC (one-vs-rest macro for > 2 classes), accuracy, MCC and cross-entropy of ``logits``."""
    num_classes = logits.shape[1]
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
