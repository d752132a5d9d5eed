"""Clinical metrics of the final model (pipeline.task.clinical) and their plots: fixed sets whose
answers are worked out by hand, no simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from pipeline.analysis.compare.report import _test_auc_cell
from pipeline.reporting.clinical_plots import CALIBRATION_FILE, ROC_FILE, write_clinical_plots
from pipeline.reporting.console import summary_table
from pipeline.task.clinical import (
    bootstrap_auc_ci,
    calibration,
    clinical_report,
    operating_point,
    probabilities,
    rank_auc,
    resolve_threshold,
    youden_threshold,
)

EVAL = OmegaConf.create({"threshold": "youden", "bootstrap": 1000, "calibration_bins": 10})

# 10 cases: 4 positives, 6 negatives
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.35, 0.2, 0.1, 0.05])


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cases of a fixed distribution: 40% positive, scores N(0.6, 0.2) vs N(0.4, 0.2)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    return np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), labels


def test_operating_point_matches_the_confusion_matrix_worked_by_hand():
    # At 0.5: predicted positive 0.9, 0.8, 0.6 (positives) and 0.7 (a negative)
    # -> tp 3, fn 1 (0.3), fp 1 (0.7), tn 5
    m = operating_point(PROBS, LABELS, 0.5)

    assert m["confusion"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["ppv"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_operating_point_has_no_ppv_when_nothing_is_called_positive():
    m = operating_point(PROBS, LABELS, 0.95)

    assert m["confusion"] == {"tn": 6, "fp": 0, "fn": 4, "tp": 0}
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert np.isnan(m["ppv"])


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    # thresholds >= t: 0.6 gives sens 3/4, spec 5/6 (J 0.583); 0.3 gives sens 1, spec 3/6 (J 0.5);
    # 0.8 gives 2/4, 6/6 (J 0.5); 0.7 gives 2/4, 5/6 (J 0.333): the best is 0.6
    t = youden_threshold(PROBS, LABELS)

    assert t == pytest.approx(0.6)
    by_hand = max(
        (operating_point(PROBS, LABELS, c)["sensitivity"] + operating_point(PROBS, LABELS, c)["specificity"], c)
        for c in PROBS
    )
    assert by_hand[1] == pytest.approx(t)


def test_youden_threshold_is_nan_when_the_labels_do_not_vary():
    assert np.isnan(youden_threshold(PROBS, np.ones_like(LABELS)))


def test_rank_auc_equals_sklearn_on_every_row_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(20, 40)).astype(float)  # many ties
    positive = rng.random((20, 40)) < 0.3

    got = rank_auc(scores, positive)

    want = [roc_auc_score(p, s) for s, p in zip(scores, positive, strict=True)]
    assert got == pytest.approx(want)


def test_bootstrap_ci_covers_the_auc_and_shrinks_with_more_cases():
    small, large = _draw(100, 0), _draw(2000, 0)

    ci_small, ci_large = bootstrap_auc_ci(*small, 1000, 42), bootstrap_auc_ci(*large, 1000, 42)

    for (probs, labels), (low, high) in ((small, ci_small), (large, ci_large)):
        assert low < roc_auc_score(labels, probs) < high
    assert (ci_large[1] - ci_large[0]) < 0.5 * (ci_small[1] - ci_small[0])  # ~ 1/sqrt(20) as wide
    assert bootstrap_auc_ci(*small, 1000, 42) == ci_small  # seeded
    assert bootstrap_auc_ci(*small, 0, 42) is None


def test_bootstrap_keeps_the_class_counts():
    # stratified: every resample has the same positives, so even 2 cases of each class give an AUC
    tiny = bootstrap_auc_ci(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), 200, 0)
    assert tiny is not None and 0.0 <= tiny[0] <= tiny[1] <= 1.0


def test_ece_is_zero_when_calibrated_and_large_when_not():
    # calibrated: in the bin of probability 0.25, a quarter are positive; at 0.75 three quarters
    probs = np.repeat([0.25, 0.75], 8)
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 1, 1, 1, 0, 0])
    overconfident = np.repeat([0.05, 0.95], 8)  # the same cases, 0.2 off in every bin

    good, bad = calibration(probs, labels, 10), calibration(overconfident, labels, 10)

    assert good["ece"] == pytest.approx(0.0)
    assert bad["ece"] == pytest.approx(0.2)
    assert calibration(np.repeat([0.05, 0.95], 8), 1 - labels, 10)["ece"] == pytest.approx(0.7)
    assert [b["count"] for b in good["reliability"]] == [0, 0, 8, 0, 0, 0, 0, 8, 0, 0]


def test_reliability_bins_agree_with_sklearn():
    probs, labels = _draw(500, 2)

    bins = calibration(probs, labels, 10)["reliability"]

    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    filled = [b for b in bins if b["count"]]
    assert [b["fraction_positive"] for b in filled] == pytest.approx(list(prob_true))
    assert [b["mean_probability"] for b in filled] == pytest.approx(list(prob_pred))
    assert sum(b["count"] for b in bins) == 500


def test_binary_report_holds_every_clinical_number_and_is_json():
    probs, labels = _draw(300, 4)

    report = clinical_report(probs, labels, 0.45, "youden on the hospitals' validation data, round 8", EVAL, 42)

    assert set(report) >= {"auc_ci", "threshold", "threshold_source", "sensitivity", "specificity", "ppv"}
    assert set(report) >= {"npv", "f1", "confusion", "ece", "reliability"}
    assert report["threshold"] == 0.45 and sum(report["confusion"].values()) == 300
    assert operating_point(probs, labels, 0.45).items() <= report.items()  # the operating point is at that threshold
    json.dumps(report, allow_nan=False)


def test_binary_report_without_a_threshold_uses_half_and_says_why():
    probs, labels = _draw(100, 5)

    report = clinical_report(probs, labels, None, "round 2 has no val_threshold", EVAL, 0)

    assert report["threshold"] == 0.5 and "no val_threshold" in report["threshold_source"]


@pytest.mark.parametrize("kind", ["multi-label", "multi-class"])
def test_non_binary_data_get_the_auc_interval_only(kind):
    rng = np.random.default_rng(6)
    if kind == "multi-label":
        labels = torch.from_numpy((rng.random((200, 3)) < 0.4).astype(np.float32))
        logits = torch.from_numpy(rng.normal(size=(200, 3)).astype(np.float32)) + 2 * labels
        macro = np.mean([roc_auc_score(labels[:, j], logits[:, j]) for j in range(3)])
    else:
        labels = torch.from_numpy(rng.integers(0, 3, 200))
        logits = torch.from_numpy(rng.normal(size=(200, 3)).astype(np.float32))
        logits[torch.arange(200), labels] += 1.5
        macro = roc_auc_score(labels, torch.softmax(logits, 1), multi_class="ovr")
    probs = probabilities(logits, labels)

    report = clinical_report(probs, labels.numpy(), 0.5, "fixed", EVAL, 42)

    assert set(report) == {"auc_ci", "auc_ci_method", "clinical_note"}
    assert kind in report["clinical_note"]
    assert report["auc_ci"][0] < macro < report["auc_ci"][1]


def test_threshold_comes_from_the_last_round_or_the_config():
    rows = [{"round": 1, "val_threshold": 0.3}, {"round": 2, "val_threshold": 0.42}]

    value, source = resolve_threshold(EVAL, rows)

    assert value == 0.42 and source == "youden on the hospitals' validation data, round 2"
    fixed = OmegaConf.merge(EVAL, {"threshold": 0.3})
    assert resolve_threshold(fixed, rows) == (0.3, "fixed by eval.threshold=0.3")
    assert resolve_threshold(EVAL, [{"round": 1, "val_threshold": None}])[0] is None


def test_plots_are_written(tmp_path):
    probs, labels = _draw(624, 7)
    report = {"auc": roc_auc_score(labels, probs)} | clinical_report(probs, labels, 0.5, "fixed", EVAL, 42)

    paths = write_clinical_plots(tmp_path, probs, labels, report)

    assert [p.name for p in paths] == [ROC_FILE, CALIBRATION_FILE]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    multi = np.random.default_rng(0).random((10, 3))
    assert write_clinical_plots(tmp_path / "none", multi, np.zeros((10, 3)), report) == []


def test_console_table_shows_the_interval_operating_point_and_shift_note():
    test = {"auc": 0.9301, "auc_ci": [0.9102, 0.9498], "threshold": 0.612, "threshold_source": "youden on x"}
    test |= {"sensitivity": 0.9, "specificity": 0.8, "ppv": 0.88, "npv": 0.83, "f1": 0.89, "ece": 0.05}
    devices = {"hospital 0": "cuda:0", "hospital 1": "cpu", "hospital 2": "cpu"}
    summary = {"test": test, "final_validation": {"val_auc": 0.985}, "devices": devices}

    table = summary_table(summary)

    assert "test AUC              0.930 [0.91, 0.95]" in table
    assert "0.612 (youden on x)" in table and "NPV" in table and "ECE" in table
    assert "test split is known to be shifted" in table
    assert "trained on            cpu (2 hospitals), cuda:0 (1 hospital)" in table
    summary["final_validation"]["val_auc"] = 0.94
    assert "shifted" not in summary_table(summary)


def test_comparison_cell_shows_the_interval_beside_the_test_auc():
    assert _test_auc_cell({"test_auc": 0.9301, "test_auc_ci": (0.9102, 0.9498)}) == "0.930 [0.91, 0.95]"
    assert _test_auc_cell({"test_auc": 0.9301, "test_auc_ci": None}) == "0.9301"
