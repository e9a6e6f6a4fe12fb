"""Evaluation metrics for the two heads (docs/models.md): stage (multiclass) and churn (binary).

Every function returns plain ``float`` values (keyed by metric name where it returns a
dict) so the result can go straight to ``mlflow.log_metrics``. Undefined values (an
AUC with one class only, precision of a class never predicted) are ``nan``, not
exceptions. The standard scores come from :mod:`sklearn.metrics`, with ``labels=`` and
``zero_division=`` set so absent classes stay in the output as ``nan``; calibration
and lift, which scikit-learn does not score this way, are computed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "calibration_bins",
    "churn_metrics",
    "expected_calibration_error",
    "lift_at",
    "multiclass_ece",
    "stage_metrics",
]

# Probabilities are clipped to [EPS, 1 - EPS] in log losses, so one confident
# mistake costs about 34.5 nats instead of infinity.
EPS = 1e-15

Strategy = Literal["uniform", "quantile"]


def _binary_inputs(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"labels and probabilities differ in length: {yy.size} vs {pp.size}")
    if yy.size == 0:
        raise ValueError("cannot compute metrics on zero rows")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("binary labels must be 0 or 1")
    if not np.isfinite(pp).all() or (pp < 0).any() or (pp > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    return yy, pp


def _multiclass_inputs(
    y_true: ArrayLike, proba: ArrayLike, classes: Sequence[str]
) -> tuple[NDArray[np.int64], NDArray[np.float64], list[str]]:
    """Labels as column indices into ``proba``, and ``proba`` checked (rows renormalised)."""
    names = [str(c) for c in classes]
    if len(set(names)) != len(names) or not names:
        raise ValueError("classes must be a non-empty list of distinct names")
    y = np.asarray(y_true).astype(str).ravel()
    prob = np.asarray(proba, dtype=np.float64)
    if prob.ndim != 2 or prob.shape != (y.size, len(names)):
        raise ValueError(
            f"proba must have shape (n_rows, n_classes) = ({y.size}, {len(names)}), "
            f"got {prob.shape}"
        )
    if y.size == 0:
        raise ValueError("cannot compute metrics on zero rows")
    if not np.isfinite(prob).all() or (prob < 0).any():
        raise ValueError("probabilities must be finite and >= 0")
    sums = prob.sum(axis=1)
    if (np.abs(sums - 1.0) > 1e-4).any():
        raise ValueError("each row of proba must sum to 1 (one probability per class)")
    prob = prob / sums[:, None]
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(y.tolist()) - set(index))
    if unknown:
        raise ValueError(f"labels not among the classes: {unknown[:5]}")
    return np.array([index[v] for v in y], dtype=np.int64), prob, names


def stage_metrics(
    y_true: ArrayLike,
    proba: ArrayLike,
    classes: Sequence[str],
    *,
    y_pred: ArrayLike | None = None,
) -> dict[str, float]:
    """Metrics of the stage head.

    Parameters
    ----------
    y_true : array_like of str
        True stage per row; every value must be one of ``classes``.
    proba : array_like, shape (n_rows, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : sequence of str
        Class names.
    y_pred : array_like of str, optional
        Predicted stages; default: the class of highest probability.

    Returns
    -------
    dict[str, float]
        ``accuracy``, ``macro_f1`` (mean F1 over the classes that occur in ``y_true`` or
        ``y_pred``, as scikit-learn's default), ``log_loss`` (probabilities clipped to
        ``[1e-15, 1]``) and, per class ``c``, ``f1_c``, ``precision_c``, ``recall_c`` and
        ``support_c``. Precision of a class never predicted and recall of a class
        absent from ``y_true`` are ``nan``; F1 is ``nan`` only when the class is in
        neither.
    """
    y, prob, names = _multiclass_inputs(y_true, proba, classes)
    if y_pred is None:
        pred = prob.argmax(axis=1)
    else:
        pred, _, _ = _multiclass_inputs(y_pred, prob, names)

    # Labels are column indices; passing every one of them keeps a row per class even
    # when it is absent, and zero_division=nan makes its undefined ratios nan (not 0).
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=np.nan
    )
    # Clipped here: scikit-learn clips at the float64 epsilon, not at EPS. It refuses a
    # single class, where every (renormalised) probability is 1 and the loss is 0.
    loss = log_loss(y, np.clip(prob, EPS, 1.0), labels=labels) if len(names) > 1 else 0.0
    out: dict[str, float] = {
        "accuracy": float(accuracy_score(y, pred)),
        # No labels=: the macro mean runs over the classes seen in y_true or y_pred.
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=np.nan)),
        "log_loss": float(loss),
    }
    for i, name in enumerate(names):
        out[f"f1_{name}"] = float(f1[i])
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
        out[f"support_{name}"] = float(support[i])
    return out


def calibration_bins(
    y: ArrayLike, p: ArrayLike, *, bins: int = 10, strategy: Strategy = "uniform"
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Reliability-diagram statistics.

    Parameters
    ----------
    y : array_like of {0, 1}
        Outcomes.
    p : array_like of float
        Predicted probabilities of outcome 1.
    bins : int, default 10
        Number of bins.
    strategy : {"uniform", "quantile"}
        ``uniform``: equal-width bins over ``[0, 1]`` (the last one closed).
        ``quantile``: edges at the quantiles of ``p``, so bins hold about the same
        number of rows; equal probabilities always share a bin, so ties (e.g. a
        constant ``p``) merge bins.

    Returns
    -------
    mean_p, frac_pos, counts : numpy.ndarray
        Mean prediction, observed frequency of 1 and number of rows per non-empty bin.
    """
    yy, pp = _binary_inputs(y, p)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(pp, np.linspace(0.0, 1.0, bins + 1))
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    # Interior edges only: a value equal to an edge goes to the bin above it, so equal
    # values share a bin and p == 1 lands in the last one.
    index = np.searchsorted(edges[1:-1], pp, side="right")
    counts = np.bincount(index, minlength=bins)
    keep = counts > 0
    sum_p = np.bincount(index, weights=pp, minlength=bins)
    sum_y = np.bincount(index, weights=yy, minlength=bins)
    n = counts[keep]
    return sum_p[keep] / n, sum_y[keep] / n, n.astype(np.int64)


def expected_calibration_error(
    y: ArrayLike, p: ArrayLike, *, bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """Expected calibration error of binary probabilities.

    ``ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over the bins of
    :func:`calibration_bins`.
    """
    mean_p, frac_pos, counts = calibration_bins(y, p, bins=bins, strategy=strategy)
    return float(np.sum(counts * np.abs(frac_pos - mean_p)) / counts.sum())


def multiclass_ece(
    y_true: ArrayLike,
    proba: ArrayLike,
    classes: Sequence[str],
    *,
    bins: int = 10,
    strategy: Strategy = "uniform",
) -> float:
    """Top-label expected calibration error.

    The confidence of each row is its highest probability and the outcome is whether
    that class is the true one; the binary ECE of those pairs is returned.
    """
    y, prob, _ = _multiclass_inputs(y_true, proba, classes)
    top = prob.argmax(axis=1)
    confidence = np.clip(prob[np.arange(y.size), top], 0.0, 1.0)
    return expected_calibration_error(
        (top == y).astype(np.float64), confidence, bins=bins, strategy=strategy
    )


def lift_at(y: ArrayLike, p: ArrayLike, *, fraction: float = 0.1) -> float:
    """Rate of 1 among the ``fraction`` highest-scored rows over the overall rate.

    The top group holds ``ceil(fraction * n)`` rows. Rows tied at the cut-off enter
    in proportion (the expected rate under a random tie-break), so a constant score
    has lift exactly 1. ``nan`` when there is no 1 at all.
    """
    yy, pp = _binary_inputs(y, p)
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    base = yy.mean()
    if base == 0:
        return math.nan
    k = math.ceil(fraction * yy.size)
    cut = np.sort(pp)[::-1][k - 1]
    above = pp > cut
    tied = pp == cut
    hits = yy[above].sum() + yy[tied].sum() * (k - above.sum()) / tied.sum()
    return float(hits / k / base)


def churn_metrics(y_true: ArrayLike, p: ArrayLike) -> dict[str, float]:
    """Metrics of the churn head.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        1 when the customer churned (no qualifying activity in the horizon).
    p : array_like of float
        Predicted churn probabilities.

    Returns
    -------
    dict[str, float]
        ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``ece`` (10 equal-width
        bins), ``ece_quantile`` (10 equal-count bins), ``lift_top_decile``, ``log_loss``
        (clipped to ``[1e-15, 1 - 1e-15]``) and ``base_rate``. The AUCs are ``nan`` when
        ``y_true`` holds one class only; the lift is ``nan`` without any churner.
    """
    y, pp = _binary_inputs(y_true, p)
    two_classes = 0 < y.sum() < y.size
    return {
        "roc_auc": float(roc_auc_score(y, pp)) if two_classes else math.nan,
        "pr_auc": float(average_precision_score(y, pp)) if two_classes else math.nan,
        "brier": float(brier_score_loss(y, pp, pos_label=1)),
        "ece": expected_calibration_error(y, pp, strategy="uniform"),
        "ece_quantile": expected_calibration_error(y, pp, strategy="quantile"),
        "lift_top_decile": lift_at(y, pp, fraction=0.1),
        "log_loss": float(log_loss(y, np.clip(pp, EPS, 1 - EPS), labels=[0.0, 1.0])),
        "base_rate": float(y.mean()),
    }
