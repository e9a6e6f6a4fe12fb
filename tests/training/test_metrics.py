"""Metrics of both heads: against scikit-learn where it has them, by hand elsewhere.

The implementation calls scikit-learn, so comparing with scikit-learn alone would only
check the wiring; the ``_by_hand`` tests recompute the same figures from a confusion
matrix and the formulas, independently of it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from customer_lifecycle.training.metrics import (
    calibration_bins,
    churn_metrics,
    expected_calibration_error,
    lift_at,
    multiclass_ece,
    stage_metrics,
)
from sklearn import metrics as skm

CLASSES = ["awareness", "consideration", "purchase", "retention", "advocacy"]


@pytest.fixture
def stage_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 600
    y = rng.choice(CLASSES, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), [CLASSES.index(v) for v in y]] += 1.5  # informative, not perfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


@pytest.fixture
def churn_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    p = rng.beta(2, 5, 2_000)
    y = (rng.random(2_000) < p).astype(int)
    return y, p


def test_stage_metrics_match_sklearn(stage_data):
    y, proba = stage_data
    got = stage_metrics(y, proba, CLASSES)
    pred = np.asarray(CLASSES)[proba.argmax(axis=1)]
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    # sklearn takes the columns in sorted label order
    order = np.argsort(CLASSES)
    expected_ll = skm.log_loss(y, proba[:, order], labels=sorted(CLASSES))
    assert got["log_loss"] == pytest.approx(expected_ll)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=CLASSES)
    for i, c in enumerate(CLASSES):
        assert got[f"precision_{c}"] == pytest.approx(p[i])
        assert got[f"recall_{c}"] == pytest.approx(r[i])
        assert got[f"f1_{c}"] == pytest.approx(f[i])
        assert got[f"support_{c}"] == s[i]
    assert all(type(v) is float for v in got.values())


def test_stage_metrics_by_hand(stage_data):
    y, proba = stage_data
    got = stage_metrics(y, proba, CLASSES)
    truth = np.array([CLASSES.index(v) for v in y])
    pred = proba.argmax(axis=1)
    confusion = np.zeros((len(CLASSES), len(CLASSES)))
    np.add.at(confusion, (truth, pred), 1)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    f1 = 2 * tp / (support + predicted)
    for i, c in enumerate(CLASSES):
        assert got[f"precision_{c}"] == pytest.approx(tp[i] / predicted[i])
        assert got[f"recall_{c}"] == pytest.approx(tp[i] / support[i])
        assert got[f"f1_{c}"] == pytest.approx(f1[i])
        assert got[f"support_{c}"] == support[i]
    assert got["accuracy"] == pytest.approx(tp.sum() / len(y))
    assert got["macro_f1"] == pytest.approx(f1.mean())
    p_true = proba[np.arange(len(y)), truth]
    assert got["log_loss"] == pytest.approx(-np.mean(np.log(p_true)))


def test_stage_metrics_use_given_predictions(stage_data):
    y, proba = stage_data
    pred = np.roll(y, 1)  # unrelated to proba
    got = stage_metrics(y, proba, CLASSES, y_pred=pred)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_stage_metrics_with_a_class_absent():
    y = np.array(["awareness", "awareness", "purchase", "purchase"])
    proba = np.zeros((4, 5))
    proba[:, 0] = [0.9, 0.2, 0.1, 0.1]  # row 1 is predicted "consideration"
    proba[:, 1] = [0.1, 0.8, 0.0, 0.0]
    proba[:, 2] = [0.0, 0.0, 0.9, 0.9]
    got = stage_metrics(y, proba, CLASSES)
    # retention and advocacy occur nowhere: undefined, left out of the macro average
    assert math.isnan(got["f1_retention"]) and math.isnan(got["recall_advocacy"])
    assert got["support_retention"] == 0.0
    # consideration is predicted once but never true: precision 0, recall undefined, F1 0
    assert got["precision_consideration"] == 0.0
    assert math.isnan(got["recall_consideration"])
    assert got["f1_consideration"] == 0.0
    # awareness: tp 1, fn 1 -> F1 2/3; purchase: perfect
    assert got["f1_awareness"] == pytest.approx(2 / 3)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(y, np.asarray(CLASSES)[proba.argmax(1)], average="macro")
    )
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.9, 0.9])))


def test_absent_classes_are_nan_without_warnings():
    # one class never predicted, one never true, one in neither: scikit-learn would
    # warn (and say 0) unless zero_division is set on purpose
    y = ["a", "a", "b", "b"]
    proba = [[0.9, 0.1, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0], [0.2, 0.8, 0.0, 0.0], [0.6, 0.4, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = stage_metrics(y, proba, ["a", "b", "c", "d"])
    assert math.isnan(got["precision_d"]) and math.isnan(got["recall_d"])
    assert math.isnan(got["f1_d"])
    assert got["precision_c"] == 0.0 and math.isnan(got["recall_c"])
    # a: tp 1, fp 1, fn 1 -> 1/2; b: tp 1, fp 0, fn 1 -> 2/3; c: 0; d left out
    assert got["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_a_single_class_has_zero_log_loss():
    got = stage_metrics(["a", "a"], [[1.0], [1.0]], ["a"])
    assert got == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "log_loss": 0.0,
        "f1_a": 1.0,
        "precision_a": 1.0,
        "recall_a": 1.0,
        "support_a": 2.0,
    }


def test_stage_log_loss_is_clipped():
    proba = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = stage_metrics(["a", "a"], proba, ["a", "b"])
    assert got["log_loss"] == pytest.approx(-np.log(1e-15) / 2)


@pytest.mark.parametrize(
    ("y", "proba", "message"),
    [
        (["a", "z"], [[0.5, 0.5], [0.5, 0.5]], "not among the classes"),  # unknown label
        (["a"], [[0.5, 0.5], [0.5, 0.5]], "shape"),  # rows disagree
        (["a"], [[0.7, 0.7]], "sum to 1"),  # not probabilities
        ([], np.zeros((0, 2)), "zero rows"),  # empty
    ],
)
def test_stage_metrics_refuse_bad_input(y, proba, message):
    with pytest.raises(ValueError, match=message):
        stage_metrics(y, proba, ["a", "b"])


def test_churn_metrics_match_sklearn(churn_data):
    y, p = churn_data
    got = churn_metrics(y, p)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert got["base_rate"] == pytest.approx(y.mean())
    # the labels are drawn from p itself, so p is calibrated up to sampling noise
    assert got["ece"] < 0.04 and got["ece_quantile"] < 0.04
    assert got["lift_top_decile"] > 1.5
    assert set(got) == {
        "roc_auc",
        "pr_auc",
        "brier",
        "ece",
        "ece_quantile",
        "lift_top_decile",
        "log_loss",
        "base_rate",
    }


def test_churn_brier_and_log_loss_by_hand(churn_data):
    y, p = churn_data
    got = churn_metrics(y, p)
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert got["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def test_churn_log_loss_is_clipped():
    # two confident mistakes, each clipped to 1e-15 instead of an infinite loss
    got = churn_metrics([1, 0], [0.0, 1.0])
    assert got["log_loss"] == pytest.approx(-np.log(1e-15), rel=1e-4)


@pytest.mark.parametrize("label", [0, 1])  # only stayers / only churners
def test_churn_metrics_with_one_class(label):
    got = churn_metrics(np.full(5, label), [0.1, 0.2, 0.3, 0.4, 0.5])
    assert math.isnan(got["roc_auc"]) and math.isnan(got["pr_auc"])
    assert got["base_rate"] == label
    assert math.isfinite(got["brier"]) and math.isfinite(got["log_loss"])
    assert math.isnan(got["lift_top_decile"]) == (label == 0)


def test_churn_metrics_with_constant_prediction():
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    got = churn_metrics(y, np.full(10, 0.3))
    assert got["roc_auc"] == 0.5
    assert got["lift_top_decile"] == pytest.approx(1.0)  # ties enter in proportion
    assert got["ece"] == pytest.approx(0.0)  # 0.3 is the base rate: one bin, exact
    assert got["ece_quantile"] == pytest.approx(0.0)
    assert got["brier"] == pytest.approx(np.mean((0.3 - y) ** 2))


def test_ece_uniform_by_hand():
    y = [0, 1, 0, 1, 1, 1]
    p = [0.12, 0.18, 0.15, 0.25, 0.65, 0.95]
    # bin [0.1, 0.2): p 0.12, 0.18, 0.15 -> mean 0.15, rate 1/3, gap 0.18333 x 3 rows
    # bins [0.2, 0.3), [0.6, 0.7), [0.9, 1]: gaps 0.75, 0.35, 0.05, one row each
    expected = (3 * (1 / 3 - 0.15) + 0.75 + 0.35 + 0.05) / 6
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    mean_p, frac, counts = calibration_bins(y, p)
    np.testing.assert_allclose(mean_p, [0.15, 0.25, 0.65, 0.95])
    np.testing.assert_allclose(frac, [1 / 3, 1, 1, 1])
    np.testing.assert_array_equal(counts, [3, 1, 1, 1])


def test_ece_edges_and_extremes():
    # 0.0 goes to the first bin, 1.0 to the last; 0.5 on an edge goes to the bin above
    mean_p, _, counts = calibration_bins([0, 1, 1], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(mean_p, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(counts, [1, 1, 1])
    assert expected_calibration_error([0, 1, 1], [0.0, 1.0, 0.5]) == pytest.approx(0.5 / 3)


def test_ece_quantile_by_hand():
    y = [0, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4]
    # two equal-count bins {0.1, 0.2} and {0.3, 0.4}: gaps 0.15 and 0.65
    assert expected_calibration_error(y, p, bins=2, strategy="quantile") == pytest.approx(0.4)
    # ten bins on four rows: each row alone
    expected = (0.1 + 0.2 + 0.7 + 0.6) / 4
    assert expected_calibration_error(y, p, strategy="quantile") == pytest.approx(expected)


def test_ece_refuses_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        expected_calibration_error([0, 1], [0.2, 0.3], strategy="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="within"):
        expected_calibration_error([0, 1], [0.2, 1.3])
    with pytest.raises(ValueError, match="0 or 1"):
        expected_calibration_error([0, 2], [0.2, 0.3])


def test_lift_by_hand():
    # 10 rows, 2 churners, the top-scored row churns: top decile rate 1 over base 0.2
    y = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    p = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.0, 0.0]
    assert lift_at(y, p) == pytest.approx(5.0)
    # 20 rows, 4 churners; top 2 rows cut through three tied at 0.9 (two churn):
    # expected hits 2 * 2/3, rate 2/3, base 0.2 -> lift 10/3
    y2 = [1, 1, 0] + [1, 1] + [0] * 15
    p2 = [0.9, 0.9, 0.9] + [0.1, 0.1] + [0.05] * 15
    assert lift_at(y2, p2) == pytest.approx(10 / 3)
    assert churn_metrics(y2, p2)["lift_top_decile"] == pytest.approx(10 / 3)


def test_multiclass_ece_is_top_label_ece():
    proba = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    y = ["a", "b", "b", "a"]
    # confidences 0.8 (right), 0.6 (wrong), 0.7 (right), 0.55 (wrong): one row per bin
    expected = (0.2 + 0.6 + 0.3 + 0.55) / 4
    assert multiclass_ece(y, proba, ["a", "b"]) == pytest.approx(expected)
