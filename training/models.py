"""The two heads (stage, churn), their calibration, and the baselines they must beat.

Both heads are LightGBM boosters trained on the training split, early-stopped and
calibrated on a separate calibration split (customers unseen in training):

* stage: multiclass softmax, then one softmax temperature fitted by log loss. Class
  imbalance is handled at decision time: the probabilities stay calibrated on the
  natural class mix, and the predicted stage is ``argmax(p * w)`` with per-stage
  weights ``w`` tuned for macro-F1 on the calibration split.
* churn: binary logistic, then Platt scaling of the raw margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from customer_lifecycle.scoring.bundle import sigmoid, softmax
from scipy.optimize import minimize, minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_LGB_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass
class StageHead:
    booster: lgb.Booster
    temperature: float
    weights: np.ndarray


@dataclass
class ChurnHead:
    booster: lgb.Booster
    platt: tuple[float, float]


def fit_stage_head(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cal: np.ndarray,
    y_cal: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
) -> StageHead:
    """Fit the multiclass head; ``y`` are integer stage indices."""
    p = {**DEFAULT_LGB_PARAMS, **(params or {})}
    p.update(objective="multiclass", num_class=n_classes, seed=seed, metric="multi_logloss")
    booster = _train(p, X_train, y_train, X_cal, y_cal, max_rounds)
    logits = np.asarray(booster.predict(X_cal, raw_score=True)).reshape(len(X_cal), n_classes)
    temperature = fit_temperature(logits, y_cal)
    proba = softmax(logits / temperature)
    weights = tune_decision_weights(proba, y_cal, n_classes)
    return StageHead(booster, temperature, weights)


def fit_churn_head(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cal: np.ndarray,
    y_cal: np.ndarray,
    *,
    seed: int,
    feature_names: list[str] | None = None,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
) -> ChurnHead:
    """Fit the binary churn head; ``y`` is 1 for churned.

    With ``feature_names``, the head is constrained to be monotone in overall activity
    (see :func:`churn_monotone_constraints`).
    """
    p = {**DEFAULT_LGB_PARAMS, **(params or {})}
    p.update(objective="binary", seed=seed, metric="binary_logloss")
    if feature_names is not None:
        p["monotone_constraints"] = churn_monotone_constraints(feature_names)
        p["monotone_constraints_method"] = "advanced"
    booster = _train(p, X_train, y_train, X_cal, y_cal, max_rounds)
    margin = np.asarray(booster.predict(X_cal, raw_score=True), dtype=np.float64)
    return ChurnHead(booster, fit_platt(margin, y_cal))


def churn_monotone_constraints(feature_names: list[str]) -> list[int]:
    """Domain knowledge as constraints: churn risk never falls as the last event gets
    older (``recency_all_days``), and never rises with overall activity (counts of all
    events, active days). Group-level features stay free: a refund or a support ticket
    may well raise the risk."""
    out = []
    for name in feature_names:
        if name == "recency_all_days":
            out.append(1)
        elif name.startswith(("count_all_", "active_days_")):
            out.append(-1)
        else:
            out.append(0)
    return out


def _train(
    params: dict[str, Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cal: np.ndarray,
    y_cal: np.ndarray,
    max_rounds: int,
) -> lgb.Booster:
    if "num_threads" not in params:
        # OpenMP threads busy-wait: on a shared 2-core machine two threads trained 26x
        # slower than one (and a 70k-row fit took 13 minutes instead of one). One thread
        # by default; set lgb_params num_threads on a dedicated machine.
        params = {**params, "num_threads": 1}
    train = lgb.Dataset(X_train, label=y_train, free_raw_data=True)
    valid = lgb.Dataset(X_cal, label=y_cal, reference=train)
    return lgb.train(
        params,
        train,
        num_boost_round=max_rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises log loss on held-out logits."""

    def nll(log_t: float) -> float:
        proba = softmax(logits / np.exp(log_t))
        return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def fit_platt(margin: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` minimising the log loss of ``sigmoid(a * margin + b)``."""
    y = y.astype(np.float64)

    def nll(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * margin + ab[1]
        p = np.clip(sigmoid(z), 1e-15, 1 - 1e-15)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
        g = p - y
        return float(loss), np.array([np.mean(g * margin), np.mean(g)])

    result = minimize(nll, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def tune_decision_weights(
    proba: np.ndarray, y: np.ndarray, n_classes: int, *, rounds: int = 3
) -> np.ndarray:
    """Per-class multipliers of ``proba`` whose argmax maximises macro-F1 on ``y``.

    Coordinate ascent over a log-spaced grid; starts from all ones (plain argmax) and
    only moves when macro-F1 improves, so it never does worse than argmax on ``y``.
    """
    weights = np.ones(n_classes)
    labels = np.arange(n_classes)

    def score(w: np.ndarray) -> float:
        pred = np.argmax(proba * w, axis=1)
        return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))

    best = score(weights)
    grid = np.exp(np.linspace(-1.5, 1.5, 13))
    for _ in range(rounds):
        improved = False
        for k in range(n_classes):
            for g in grid:
                trial = weights.copy()
                trial[k] = weights[k] * g
                s = score(trial)
                if s > best + 1e-9:
                    best, weights, improved = s, trial, True
        if not improved:
            break
    return weights / weights.max()


# -- baselines --------------------------------------------------------------------------

RFM_COLUMNS = ("recency_all_days", "purchase_days", "amount_purchase_sum_all", "tenure_days")


def rfm_matrix(features: pd.DataFrame) -> np.ndarray:
    """log1p of recency, frequency, monetary value and tenure; never-seen recency is large."""
    X = features[list(RFM_COLUMNS)].to_numpy(dtype=np.float64).copy()
    X[np.isnan(X)] = 10_000.0
    return np.log1p(np.clip(X, 0.0, None))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, seed: int) -> Any:
    """Standardised logistic regression (the RFM and recency-only churn baselines)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    return model.fit(X, y)


def class_frequencies(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Training class frequencies: the majority baseline's probabilities."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return counts / counts.sum()
