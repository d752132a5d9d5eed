"""Metrics against scikit-learn: single-label (softmax) and multi-label (sigmoid, per finding and macro)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, matthews_corrcoef, roc_auc_score

from pipeline.task.metrics import classification_metrics


def _multi_label_case(seed: int = 0, n: int = 200, findings: int = 3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, findings)) < [0.3, 0.5, 0.1]).astype(np.float32)
    logits = rng.normal(size=(n, findings)) + 1.5 * (labels - 0.5) * np.array([2.0, 0.5, 1.0])
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def test_multi_label_auc_is_the_macro_mean_of_per_finding_aucs():
    # Prepare
    logits, labels = _multi_label_case()
    names = ["Cardiomegaly", "Effusion", "Nodule"]
    probs = torch.sigmoid(logits).numpy()

    # Execute
    m = classification_metrics(logits, labels, names)

    # Assert: scikit-learn as the reference
    per = [roc_auc_score(labels[:, j], probs[:, j]) for j in range(3)]
    for j, name in enumerate(names):
        assert m["per_label"][name]["auc"] == pytest.approx(per[j], abs=1e-9)
        pred = (probs[:, j] >= 0.5).astype(int)
        assert m["per_label"][name]["accuracy"] == pytest.approx(accuracy_score(labels[:, j], pred))
        assert m["per_label"][name]["mcc"] == pytest.approx(matthews_corrcoef(labels[:, j], pred), abs=1e-9)
        assert m["per_label"][name]["positives"] == int(labels[:, j].sum())
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"), abs=1e-9)
    assert m["auc"] == pytest.approx(np.mean(per))
    # BCE over every (image, finding) entry
    expected_loss = np.mean([log_loss(labels[:, j], probs[:, j], labels=[0, 1]) for j in range(3)])
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_a_finding_absent_from_the_test_set_has_no_auc_and_is_left_out_of_the_mean():
    # Prepare: finding 2 never occurs
    logits, labels = _multi_label_case(seed=1)
    labels[:, 2] = 0
    probs = torch.sigmoid(logits).numpy()

    # Execute
    m = classification_metrics(logits, labels, ["a", "b", "c"])

    # Assert
    assert math.isnan(m["per_label"]["c"]["auc"])
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in range(2)]))


def test_multi_label_names_default_to_their_index():
    logits, labels = _multi_label_case(findings=3)

    assert list(classification_metrics(logits, labels)["per_label"]) == ["label_0", "label_1", "label_2"]


def test_single_label_metrics_match_scikit_learn():
    # Prepare
    rng = np.random.default_rng(2)
    labels = torch.tensor(rng.integers(0, 3, 300))
    logits = torch.tensor(rng.normal(size=(300, 3)), dtype=torch.float32)
    logits[torch.arange(300), labels] += 1.0
    probs = torch.softmax(logits, 1).numpy()

    # Execute
    m = classification_metrics(logits, labels)

    # Assert
    assert "per_label" not in m
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-9)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, probs.argmax(1)), abs=1e-9)
