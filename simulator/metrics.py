"""Small scoring helpers for the oracle (kept here so the simulator needs no scikit-learn)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of predictions equal to the truth."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes seen in truth or prediction.

    Matches ``sklearn.metrics.f1_score(average="macro")`` (a class with no true and no
    predicted member is not counted; a class with no correct prediction scores 0).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    scores = []
    for c in np.unique(np.concatenate([y_true, y_pred])):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        scores.append(2.0 * tp / denom)
    return float(np.mean(scores))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties counted half.

    Returns NaN when ``y_true`` holds only one class.
    """
    y = np.asarray(y_true, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, dtype=float)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true: np.ndarray, proba: np.ndarray, *, eps: float = 1e-15) -> float:
    """Mean negative log-probability of the true class; ``y_true`` holds column indices."""
    proba = np.asarray(proba, dtype=float)
    picked = proba[np.arange(proba.shape[0]), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))
