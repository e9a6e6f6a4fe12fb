"""The two heads (stage, churn), their calibration, and the baselines they must beat.

Both heads are LightGBM boosters fitted in two passes (docs/models.md#training-data-and-the-split):

1. **Cross-fitting** (:func:`cross_fit`): K boosters, each trained on all but one fold
   of customers and early-stopped on that fold. Their out-of-fold raw scores calibrate
   the head, and their best iterations set the number of rounds of the final fit.
2. **The final fit** (:func:`fit_rounds`): one booster on every row given, for the
   chosen number of rounds, with the out-of-fold calibration.

* stage: multiclass softmax, then one softmax temperature fitted by log loss. Class
  imbalance is handled at decision time: the probabilities stay calibrated on the
  natural class mix, and the predicted stage is ``argmax(p * w)`` with per-stage
  weights ``w`` tuned for macro-F1 on the out-of-fold scores.
* churn: binary logistic, then Platt scaling of the raw margin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from customer_lifecycle.scoring.bundle import sigmoid, softmax
from customer_lifecycle.training import refit
from customer_lifecycle.training.refit import FinalFits
from scipy.optimize import minimize, minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_LGB_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    # Judged on the worst of six scenario-family scenarios at two seeds (9,000 labels):
    # 15 leaves, 80 rows per leaf and half the features per tree raised the worst stage
    # ratio to the oracle from 0.950 to 0.958 and left the worst churn gap where it was
    # (0.0111 against 0.0107), with a smaller mean churn gap, against 31 / 40 / 0.8.
    "num_leaves": 15,
    "min_data_in_leaf": 80,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}

# Rows held out once by a single held-out fold (``folds=1``): one fifth of the fit set.
SINGLE_FOLD_SHARE = 0.2


@dataclass
class CrossFit:
    """One head cross-fitted over customer folds.

    ``oof`` holds each held-out row's raw score from the booster that did not see it
    (``NaN`` for rows never held out, which only a single held-out fold leaves).
    """

    boosters: list[lgb.Booster]
    oof: np.ndarray
    held_out: np.ndarray  # bool per row: has an out-of-fold score
    best_iterations: list[int]
    fold_train_rows: list[int]

    def rounds_for(self, max_rounds: int) -> int:
        """Rounds for the booster refitted on every row: the folds' mean best iteration.

        Not scaled up for the refit's larger data: scaling by the square root of the
        rows' ratio, or by the ratio itself, scored lower on fresh customers
        (docs/models.md#training-data-and-the-split).
        """
        return int(min(max_rounds, max(1, round(float(np.mean(self.best_iterations))))))

    def raw_mean(self, X: np.ndarray) -> np.ndarray:
        """The fold boosters' mean raw score: the cross-fitted ensemble's."""
        return np.mean([np.asarray(b.predict(X, raw_score=True)) for b in self.boosters], axis=0)


def customer_folds(customers: pd.Series | np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per row, the same for every row of a customer.

    ``folds >= 2``: customers are dealt at random into ``folds`` folds of near-equal
    size. ``folds == 1``: one held-out fold of ``SINGLE_FOLD_SHARE`` of the customers;
    the other rows get ``-1`` (never held out).

    Raises
    ------
    ValueError
        With fewer customers than folds.
    """
    ids = pd.Series(np.asarray(customers, dtype=object)).astype(str)
    unique = np.array(sorted(ids.unique()), dtype=object)
    parts = max(folds, 2)
    if len(unique) < parts:
        raise ValueError(
            f"{len(unique)} labelled customer(s) outside validation cannot fill {parts} folds"
        )
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    if folds == 1:
        n_held = max(1, round(len(unique) * SINGLE_FOLD_SHARE))
        fold_of = {c: (0 if i < n_held else -1) for i, c in enumerate(unique)}
    else:
        fold_of = {c: i % folds for i, c in enumerate(unique)}
    return ids.map(fold_of).to_numpy(dtype=np.int64)


def stage_params(n_classes: int, seed: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM parameters of the stage head (multiclass softmax)."""
    p = {**DEFAULT_LGB_PARAMS, **(params or {})}
    p.update(objective="multiclass", num_class=n_classes, seed=seed, metric="multi_logloss")
    return p


def churn_params(
    seed: int, feature_names: list[str] | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """LightGBM parameters of the churn head (binary logistic).

    With ``feature_names``, the head is constrained to be monotone in overall activity
    (see :func:`churn_monotone_constraints`).
    """
    p = {**DEFAULT_LGB_PARAMS, **(params or {})}
    p.update(objective="binary", seed=seed, metric="binary_logloss")
    if feature_names is not None:
        p["monotone_constraints"] = churn_monotone_constraints(feature_names)
        p["monotone_constraints_method"] = "advanced"
    return p


def cross_fit(
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    max_rounds: int,
    *,
    min_delta: float = 0.0,
) -> CrossFit:
    """One booster per fold, trained on the other rows and early-stopped on the fold.

    Parameters
    ----------
    params
        LightGBM parameters (:func:`stage_params` or :func:`churn_params`).
    X, y
        Features and integer targets of the fit set.
    folds
        Fold index per row from :func:`customer_folds` (``-1``: never held out).
    max_rounds
        Upper bound on every booster's rounds.
    min_delta
        A fold's booster stops when 50 rounds in a row lowered its held-out loss by no
        more than this in all (``0``: by nothing).
    """
    n_out = int(params.get("num_class", 1))
    oof = np.full((len(y), n_out) if n_out > 1 else len(y), np.nan)
    boosters, best, rows = [], [], []
    for k in np.unique(folds[folds >= 0]):
        held = folds == k
        booster = _train(params, X[~held], y[~held], X[held], y[held], max_rounds, min_delta)
        raw = np.asarray(booster.predict(X[held], raw_score=True), dtype=np.float64)
        oof[held] = raw.reshape(int(held.sum()), n_out) if n_out > 1 else raw
        boosters.append(booster)
        # a booster that never improved on its first round reports 0
        best.append(max(1, int(booster.best_iteration)))
        rows.append(int((~held).sum()))
    return CrossFit(boosters, oof, folds >= 0, best, rows)


def fit_rounds(params: dict[str, Any], X: np.ndarray, y: np.ndarray, rounds: int) -> lgb.Booster:
    """A booster on every given row for exactly ``rounds`` rounds (no early stopping)."""
    return refit.fit_rounds(_one_thread(params), X, y, rounds)


def calibrate_stage(
    logits: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int = 0
) -> tuple[float, np.ndarray]:
    """Temperature and decision weights from held-out logits ``(n, n_classes)``.

    Up to :data:`BOOTSTRAP_MAX_ROWS` rows, the weights are the geometric mean of
    :data:`DECISION_BOOTSTRAPS` tunings on bootstrap resamples (seeded by ``seed``);
    above, one tuning on every row. See :func:`tune_decision_weights`.
    """
    temperature = fit_temperature(logits, y)
    bootstraps = DECISION_BOOTSTRAPS if len(y) <= BOOTSTRAP_MAX_ROWS else 0
    weights = tune_decision_weights(
        softmax(logits / temperature), y, n_classes, bootstraps=bootstraps, seed=seed
    )
    return temperature, weights


# Bootstrap resamples the stage decision weights are tuned on (docs/models.md#the-two-heads):
# tuned once on the out-of-fold rows, they chased the noise of a rare stage's few rows.
# Above BOOTSTRAP_MAX_ROWS rows a rare stage has enough of them, and 50 tunings would cost
# seconds (about 35 ms each on 7,000 rows of 6 stages).
DECISION_BOOTSTRAPS = 50
BOOTSTRAP_MAX_ROWS = 25_000


@dataclass
class StageHead:
    """The stage head: the final booster, its out-of-fold calibration, and the folds."""

    booster: lgb.Booster
    temperature: float
    weights: np.ndarray
    cross: CrossFit
    rounds: int


@dataclass
class ChurnHead:
    """The churn head: the final booster, its out-of-fold Platt scaling, and the folds."""

    booster: lgb.Booster
    platt: tuple[float, float]
    cross: CrossFit
    rounds: int


# Rulebook labels are a function of the features, so the stage head's held-out loss
# keeps falling towards zero and it would train to max_rounds: it stops once 50 rounds
# gain less than this in multi-class log loss (CDNOW: ~250 rounds instead of 2,000).
RULEBOOK_MIN_DELTA = 1e-4


def cross_fit_stage(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    folds: np.ndarray,
    y_all: np.ndarray,
    final: FinalFits,
    *,
    n_classes: int,
    seed: int,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
    final_seeds: int = 1,
    min_delta: float = 0.0,
) -> StageFolds:
    """Submit the stage head's final fit to ``final``, then cross-fit and calibrate it.

    Parameters
    ----------
    X_fit, y_fit, folds
        The fit set (stage indices) and its customer folds (:func:`customer_folds`):
        the temperature, the decision weights and the rounds come from these alone.
    y_all, final
        Every labelled row's stage, and the final fits on every labelled row's features
        (:class:`~customer_lifecycle.training.refit.FinalFits`), told the rounds here.
    final_seeds
        Final fits submitted (``stage/0``, ``stage/1``, ...), each with its own seed
        (bagging and feature sampling), all for the rounds chosen here; the head's
        booster is their average (``final.averaged("stage", final_seeds)``).
    min_delta
        Early stopping's tolerance (:func:`cross_fit`): :data:`RULEBOOK_MIN_DELTA` for
        rulebook labels.
    """
    p = _one_thread(stage_params(n_classes, seed, params))
    names = _submit_final(final, "stage", p, y_all, max_rounds, final_seeds)
    cross = cross_fit(p, X_fit, y_fit, folds, max_rounds, min_delta=min_delta)
    rounds = cross.rounds_for(max_rounds)
    for name in names:
        final.stop_at(name, rounds)
    held = cross.held_out
    temperature, weights = calibrate_stage(cross.oof[held], y_fit[held], n_classes, seed=seed)
    return StageFolds(cross, rounds, temperature, weights)


def cross_fit_churn(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    folds: np.ndarray,
    y_all: np.ndarray,
    final: FinalFits,
    *,
    seed: int,
    feature_names: list[str] | None = None,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
    final_seeds: int = 1,
    calibration_rows: int | None = None,
) -> ChurnFolds:
    """:func:`cross_fit_stage` for the binary churn head (``y`` is 1 for churned).

    ``feature_names`` are those of :func:`churn_params`. Platt scaling is fitted on the
    out-of-fold scores of the first ``calibration_rows`` rows (all by default): the
    labelled snapshots when earlier ones follow them, so that probabilities are
    calibrated at the time the model will score.
    """
    p = _one_thread(churn_params(seed, feature_names, params))
    names = _submit_final(final, "churn", p, y_all, max_rounds, final_seeds)
    cross = cross_fit(p, X_fit, y_fit, folds, max_rounds)
    rounds = cross.rounds_for(max_rounds)
    for name in names:
        final.stop_at(name, rounds)
    held = cross.held_out.copy()
    if calibration_rows is not None:
        held[calibration_rows:] = False
    return ChurnFolds(cross, rounds, fit_platt(cross.oof[held], y_fit[held]))


# Seeds of a head's final fits: the head's seed, then this far apart.
FINAL_SEED_STEP = 1_000_003


def _submit_final(
    final: FinalFits,
    head: str,
    params: dict[str, Any],
    y_all: np.ndarray,
    max_rounds: int,
    seeds: int,
) -> tuple[str, ...]:
    names = refit.final_names(head, seeds)
    for i, name in enumerate(names):
        final.submit(
            name, {**params, "seed": params["seed"] + i * FINAL_SEED_STEP}, y_all, max_rounds
        )
    return names


@dataclass
class StageFolds:
    """The stage head before its final booster: folds, rounds and calibration."""

    cross: CrossFit
    rounds: int
    temperature: float
    weights: np.ndarray

    def head(self, booster: lgb.Booster) -> StageHead:
        return StageHead(booster, self.temperature, self.weights, self.cross, self.rounds)


@dataclass
class ChurnFolds:
    """The churn head before its final booster: folds, rounds and Platt scaling."""

    cross: CrossFit
    rounds: int
    platt: tuple[float, float]

    def head(self, booster: lgb.Booster) -> ChurnHead:
        return ChurnHead(booster, self.platt, self.cross, self.rounds)


def fit_stage_head(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    folds: np.ndarray,
    X_all: np.ndarray,
    y_all: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
) -> StageHead:
    """Cross-fit the multiclass head on the fit set, then fit it on every row, here.

    ``X_all, y_all`` are every labelled row: the final booster's training data; the
    rest is :func:`cross_fit_stage`'s.
    """
    with FinalFits(X_all, refit.final_names("stage", 1), parallel=False) as final:
        folded = cross_fit_stage(
            X_fit, y_fit, folds, y_all, final,
            n_classes=n_classes, seed=seed, max_rounds=max_rounds, params=params,
        )  # fmt: skip
        return folded.head(final.averaged("stage", 1))


def fit_churn_head(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    folds: np.ndarray,
    X_all: np.ndarray,
    y_all: np.ndarray,
    *,
    seed: int,
    feature_names: list[str] | None = None,
    max_rounds: int = 2000,
    params: dict[str, Any] | None = None,
) -> ChurnHead:
    """:func:`fit_stage_head` for the binary churn head (``y`` is 1 for churned)."""
    with FinalFits(X_all, refit.final_names("churn", 1), parallel=False) as final:
        folded = cross_fit_churn(
            X_fit, y_fit, folds, y_all, final,
            seed=seed, feature_names=feature_names, max_rounds=max_rounds, params=params,
        )  # fmt: skip
        return folded.head(final.averaged("churn", 1))


@dataclass
class FoldEnsemble:
    """Both heads' fold boosters with the out-of-fold calibration.

    The model the validation metrics describe: none of its boosters saw a validation
    customer. Its raw scores are the fold boosters' mean, calibrated like the final
    model's (:meth:`predict_matrix` has the keys of ``ModelBundle.predict_matrix`` that
    evaluation reads).
    """

    stage: StageHead
    churn: ChurnHead
    stages: tuple[str, ...]
    feature_names: list[str]

    def predict_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Stage, stage probabilities and churn probability for a feature matrix."""
        logits = self.stage.cross.raw_mean(X).reshape(len(X), len(self.stages))
        proba = softmax(logits / self.stage.temperature)
        pick = np.argmax(proba * self.stage.weights, axis=1)
        a, b = self.churn.platt
        return {
            "stage": np.asarray(self.stages, dtype=object)[pick],
            "stage_proba": proba,
            "churn_probability": sigmoid(a * self.churn.cross.raw_mean(X) + b),
        }


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


def _one_thread(params: dict[str, Any]) -> dict[str, Any]:
    if "num_threads" not in params:
        # OpenMP threads busy-wait: on a shared 2-core machine two threads trained 26x
        # slower than one (and a 70k-row fit took 13 minutes instead of one). One thread
        # by default; set lgb_params num_threads on a dedicated machine.
        return {**params, "num_threads": 1}
    return params


def _train(
    params: dict[str, Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cal: np.ndarray,
    y_cal: np.ndarray,
    max_rounds: int,
    min_delta: float = 0.0,
) -> lgb.Booster:
    train = lgb.Dataset(X_train, label=y_train, free_raw_data=True)
    valid = lgb.Dataset(X_cal, label=y_cal, reference=train)
    return lgb.train(
        _one_thread(params),
        train,
        num_boost_round=max_rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(50, verbose=False, min_delta=min_delta)],
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
    proba: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    rounds: int = 3,
    bootstraps: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Per-class multipliers of ``proba`` whose argmax maximises macro-F1 on ``y``.

    Coordinate ascent over a log-spaced grid; starts from all ones (plain argmax) and
    only moves when macro-F1 improves, so it never does worse than argmax on ``y``.

    With ``bootstraps`` > 0 the weights are tuned on that many bootstrap resamples of
    the rows and their geometric mean is returned: tuned once, they follow the noise of
    the few examples of a rare stage (which decide its F1) and move the decision far
    from where a new sample of customers would put it. Each tuning never does worse
    than argmax on its resample; their mean carries no such promise on ``y`` itself.
    """
    if bootstraps <= 0:
        return _tune_weights(proba, np.asarray(y), n_classes, rounds)
    rng = np.random.default_rng(seed)
    logs = np.zeros(n_classes)
    for _ in range(bootstraps):
        rows = rng.integers(0, len(y), size=len(y))
        logs += np.log(_tune_weights(proba[rows], np.asarray(y)[rows], n_classes, rounds))
    weights = np.exp(logs / bootstraps)
    return weights / weights.max()


def _tune_weights(proba: np.ndarray, y: np.ndarray, n_classes: int, rounds: int) -> np.ndarray:
    weights = np.ones(n_classes)
    best = macro_f1(y, np.argmax(proba, axis=1), n_classes)
    grid = np.exp(np.linspace(-1.5, 1.5, 13))
    for _ in range(rounds):
        improved = False
        for k in range(n_classes):
            predict = _sweep(proba, weights, k)
            for g in grid:
                w_k = weights[k] * g  # from class k's weight as this sweep has moved it
                s = macro_f1(y, predict(w_k), n_classes)
                if s > best + 1e-9:
                    best, improved = s, True
                    weights = weights.copy()
                    weights[k] = w_k
        if not improved:
            break
    return weights / weights.max()


def _sweep(proba: np.ndarray, weights: np.ndarray, k: int) -> Callable[[float], np.ndarray]:
    """``predict(w)``: ``argmax(proba * weights)`` with class k's weight set to ``w``.

    Only class k's weight moves: the best of the other classes per row is fixed, and a
    row goes to k where k's weighted score beats it (ties to the lower index, as argmax
    breaks them), without recomputing the argmax for every trial.
    """
    others = proba * weights
    others[:, k] = -np.inf
    other = np.argmax(others, axis=1)
    top = others[np.arange(len(other)), other]
    tie = np.minimum(other, k)

    def predict(w: float) -> np.ndarray:
        score_k = proba[:, k] * w
        return np.where(score_k > top, k, np.where(score_k == top, tie, other))

    return predict


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over classes ``0 .. n_classes - 1`` (a class never seen nor predicted: 0).

    What ``sklearn.metrics.f1_score(average="macro", labels=range(n_classes),
    zero_division=0)`` gives, from one ``bincount``: the weight search calls it
    thousands of times.
    """
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2 tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


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
