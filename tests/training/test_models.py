"""Cross-fitting, out-of-fold calibration and the refit on every row (training/models.py),
and the fit / validation split they start from (training/train.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.scoring.bundle import sigmoid, softmax
from customer_lifecycle.training import models
from customer_lifecycle.training.train import Examples, TrainConfig, split_examples
from sklearn.metrics import log_loss, roc_auc_score

# Trees that can give every customer id its own leaf: a booster that saw a customer
# recalls its label, one that did not can only guess.
MEMORISE = {
    "num_leaves": 512,
    "min_data_in_leaf": 2,
    "min_sum_hessian_in_leaf": 0.0,
    "min_data_in_bin": 1,
    "max_bin": 1024,
    "lambda_l2": 0.0,
    "learning_rate": 0.3,
    "feature_fraction": 1.0,
    "bagging_fraction": 1.0,
    "bagging_freq": 0,
}


def _root_rows(booster) -> int:  # type: ignore[no-untyped-def]
    """Rows the first tree was grown on (all of them without bagging)."""
    return int(booster.dump_model()["tree_info"][0]["tree_structure"]["internal_count"])


def _id_problem(customers: int = 300, rows_each: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    """A learnable customer-id feature and a random label per customer."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(customers), rows_each)
    X = np.column_stack([ids.astype(float), rng.normal(size=len(ids))])
    y = rng.integers(0, 2, customers)[ids]
    return ids, X, y


# -- folds ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_customer_is_in_two_folds(k: int) -> None:
    customers = pd.Series([f"c{i % 97}" for i in range(1000)])
    folds = models.customer_folds(customers, k, seed=4)
    per_customer = pd.DataFrame({"c": customers, "f": folds}).groupby("c")["f"].nunique()
    assert (per_customer == 1).all()
    sizes = np.bincount(pd.Series(folds).groupby(customers).first(), minlength=k)
    assert set(np.unique(folds)) == set(range(k))
    assert sizes.max() - sizes.min() <= 1  # customers dealt evenly


def test_a_single_held_out_fold_holds_a_fifth_of_the_customers() -> None:
    customers = pd.Series([f"c{i}" for i in range(500)])
    folds = models.customer_folds(customers, 1, seed=0)
    assert set(np.unique(folds)) == {-1, 0}
    assert (folds == 0).sum() == 100


def test_folds_need_as_many_customers_as_folds() -> None:
    with pytest.raises(ValueError, match="cannot fill 5 folds") as info:
        models.customer_folds(pd.Series(["a", "b", "a", "c"]), 5, seed=0)
    assert "\n" not in str(info.value)


def _two_snapshots(customers: int = 400) -> Examples:
    """Every customer at 2024-09-30 and 2024-12-31, stages cycling, churn alternating."""
    ids = [f"c{i}" for i in range(customers)]
    times = [pd.Timestamp("2024-09-30", tz="UTC"), pd.Timestamp("2024-12-31", tz="UTC")]
    keys = pd.DataFrame({"customer_id": ids * 2, "as_of": np.repeat(times, customers)}).reset_index(
        drop=True
    )
    n = len(keys)
    return Examples(
        keys, pd.DataFrame({"x": np.arange(n, dtype=float)}), np.arange(n) % 5, np.arange(n) % 2
    )


def test_fold_training_rows_respect_time_and_customer() -> None:
    config = TrainConfig(horizon_days=90, seed=3)
    ex = _two_snapshots()
    fit, valid, kind = split_examples(ex, config)
    assert kind == "time+customer"
    latest = ex.keys["as_of"].max()
    # validation: the latest snapshot only; the fit set: windows closed by then
    assert (valid.keys["as_of"] == latest).all()
    assert (fit.keys["as_of"] + pd.Timedelta(days=90) <= latest).all()
    assert not set(fit.keys["customer_id"]) & set(valid.keys["customer_id"])
    folds = models.customer_folds(fit.keys["customer_id"], 5, seed=config.seed)
    for k in range(5):
        train_ids = set(fit.keys["customer_id"][folds != k])
        held_ids = set(fit.keys["customer_id"][folds == k])
        assert not train_ids & held_ids
        assert not train_ids & set(valid.keys["customer_id"])
    assert len(fit.stage) + len(valid.stage) < len(ex.stage)  # the rest reaches the refit only


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["five", -1, 11, True, 2.5, None])
def test_bad_cv_folds_are_one_line(bad: object) -> None:
    with pytest.raises(ValueError, match="cv_folds must be") as info:
        TrainConfig(cv_folds=bad)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_automatic_folds_shrink_with_size_and_explicit_folds_win() -> None:
    auto = TrainConfig()
    assert auto.folds_for(7_000) == 5
    assert auto.folds_for(80_000) == 1
    assert [auto.folds_for(n) for n in (1_000, 30_000, 60_000, 500_000)] == sorted(
        [auto.folds_for(n) for n in (1_000, 30_000, 60_000, 500_000)], reverse=True
    )
    assert TrainConfig(cv_folds=0).folds_for(7_000) == 5
    assert TrainConfig(cv_folds=3).folds_for(500_000) == 3


# -- cross-fitting, refit and calibration -----------------------------------------------


def test_out_of_fold_scores_come_from_boosters_that_never_saw_the_row() -> None:
    ids, X, y = _id_problem()
    folds = models.customer_folds(ids, 5, seed=1)
    cross = models.cross_fit(models.churn_params(0, params=MEMORISE), X, y, folds, 30)
    assert cross.held_out.all() and not np.isnan(cross.oof).any()
    assert roc_auc_score(y, cross.oof) < 0.65  # a guess: the id was never seen
    # the same boosters on their own training rows recall the labels
    seen = np.asarray(cross.boosters[0].predict(X[folds != 0], raw_score=True))
    assert roc_auc_score(y[folds != 0], seen) > 0.95


def test_the_final_booster_sees_every_row_and_the_held_out_model_none_of_validation() -> None:
    ids, X, y = _id_problem(customers=375)
    valid = ids >= 300  # the last 75 customers play validation
    folds = models.customer_folds(ids[~valid], 5, seed=2)
    head = models.fit_churn_head(
        X[~valid], y[~valid], folds, X, y, seed=0, max_rounds=30, params=MEMORISE
    )
    assert _root_rows(head.booster) == len(y)
    assert head.booster.num_trees() == head.rounds
    assert all(_root_rows(b) < int((~valid).sum()) for b in head.cross.boosters)
    stage = models.fit_stage_head(
        X[~valid], y[~valid], folds, X, y, n_classes=2, seed=0, max_rounds=30, params=MEMORISE
    )
    ensemble = models.FoldEnsemble(stage, head, ("a", "b"), ["id", "noise"])
    held_out = ensemble.predict_matrix(X[valid])["churn_probability"]
    final = head.booster.predict(X[valid], raw_score=True)
    assert roc_auc_score(y[valid], final) > 0.9  # the registered booster saw them
    assert roc_auc_score(y[valid], held_out) < 0.7  # the validated model did not


def test_refit_rounds_are_the_folds_mean_best_iteration_within_max_rounds() -> None:
    ids, X, y = _id_problem()
    folds = models.customer_folds(ids, 3, seed=0)
    cross = models.cross_fit(models.churn_params(0), X, y, folds, 300)
    assert len(cross.best_iterations) == 3
    assert all(1 <= it <= 300 for it in cross.best_iterations)
    # each fold booster keeps up to 50 rounds past its best: the best is what counts
    assert cross.rounds_for(300) == round(np.mean(cross.best_iterations))
    assert cross.rounds_for(1) == 1


def test_rulebook_tolerance_stops_a_head_whose_held_out_loss_only_creeps_down() -> None:
    # labels a rule of a count, as rulebook labels are: the held-out loss falls towards
    # zero by ever less, so without a tolerance every fold runs on to max_rounds
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1200, 3))
    X[:, 0] = rng.integers(0, 6, len(X))
    y = (X[:, 0] >= 2).astype(int) + (X[:, 0] >= 4).astype(int)
    folds = models.customer_folds(np.arange(len(y)), 3, seed=0)
    params = models.stage_params(3, 0)
    plain = models.cross_fit(params, X, y, folds, 500)
    tolerant = models.cross_fit(params, X, y, folds, 500, min_delta=models.RULEBOOK_MIN_DELTA)
    assert plain.best_iterations == [500] * 3
    assert max(tolerant.best_iterations) < 350
    assert (tolerant.oof.argmax(axis=1) == y).all()  # the rule is learnt all the same


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes from two features with much label noise: easy to overfit."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    logits = np.column_stack([X[:, 0], X[:, 1], -X[:, 0] - X[:, 1]])
    u = rng.random(n)[:, None]
    y = (u > np.cumsum(softmax(logits), axis=1)).sum(axis=1)
    return X, y


def test_out_of_fold_calibration_improves_held_out_log_loss() -> None:
    X, y = _noisy(3000, 0)
    X_new, y_new = _noisy(3000, 1)
    customers = np.arange(len(y))
    folds = models.customer_folds(customers, 5, seed=0)
    overfit = {"num_leaves": 63, "min_data_in_leaf": 5, "learning_rate": 0.3}
    stage = models.fit_stage_head(
        X, y, folds, X, y, n_classes=3, seed=0, max_rounds=200, params=overfit
    )
    logits = np.asarray(stage.booster.predict(X_new, raw_score=True)).reshape(-1, 3)
    raw_loss = log_loss(y_new, softmax(logits), labels=[0, 1, 2])
    assert log_loss(y_new, softmax(logits / stage.temperature), labels=[0, 1, 2]) < raw_loss
    # fitted on in-sample logits the temperature would be far lower: the booster is
    # sure of rows it was trained on
    in_sample = np.asarray(stage.booster.predict(X, raw_score=True)).reshape(-1, 3)
    assert models.fit_temperature(in_sample, y) < stage.temperature

    churn_y, churn_new = (y == 0).astype(int), (y_new == 0).astype(int)
    churn = models.fit_churn_head(
        X, churn_y, folds, X, churn_y, seed=0, max_rounds=200, params=overfit
    )
    margin = np.asarray(churn.booster.predict(X_new, raw_score=True))
    a, b = churn.platt
    assert log_loss(churn_new, sigmoid(a * margin + b)) < log_loss(churn_new, sigmoid(margin))


# -- stage decision weights ---------------------------------------------------------------


def test_fast_macro_f1_is_sklearns() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for k, n in ((2, 50), (5, 3000), (6, 7)):  # binary; many rows; classes never seen
        y, pred = rng.integers(0, k, n), rng.integers(0, k, n)
        pred[: n // 3] = y[: n // 3]
        expected = f1_score(y, pred, labels=np.arange(k), average="macro", zero_division=0)
        assert models.macro_f1(y, pred, k) == pytest.approx(expected, abs=1e-12)


def _rare_class_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities of 3 stages, one rare (3%), and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 1.5 + np.log([0.6, 0.37, 0.03])
    proba = softmax(logits)
    y = (rng.random((n, 1)) > np.cumsum(proba, axis=1)).sum(axis=1)  # one draw per row
    return proba, y


def test_bootstrapped_weights_generalise_at_least_as_well() -> None:
    # weights tuned on 1,500 rows, judged on 60,000 fresh rows of the same population:
    # bagging the tuning must not be worse on average, and its weights move less
    fresh_p, fresh_y = _rare_class_sample(60_000, seed=99)
    once, bagged, spread_once, spread_bagged = [], [], [], []
    for seed in range(6):
        proba, y = _rare_class_sample(1_500, seed)
        w1 = models.tune_decision_weights(proba, y, 3)
        wb = models.tune_decision_weights(proba, y, 3, bootstraps=15, seed=seed)
        assert wb.max() == pytest.approx(1.0) and (wb > 0).all()
        once.append(models.macro_f1(fresh_y, np.argmax(fresh_p * w1, axis=1), 3))
        bagged.append(models.macro_f1(fresh_y, np.argmax(fresh_p * wb, axis=1), 3))
        spread_once.append(np.ptp(np.log(w1)))
        spread_bagged.append(np.ptp(np.log(wb)))
    assert np.mean(bagged) >= np.mean(once) - 0.002
    assert np.mean(spread_bagged) < np.mean(spread_once)
    # seeded: the same weights twice
    proba, y = _rare_class_sample(500, 0)
    a = models.tune_decision_weights(proba, y, 3, bootstraps=5, seed=3)
    assert np.array_equal(a, models.tune_decision_weights(proba, y, 3, bootstraps=5, seed=3))


def test_calibration_bags_the_weights_only_where_rows_are_few() -> None:
    for n, bagged in ((2_000, True), (models.BOOTSTRAP_MAX_ROWS + 1, False)):
        proba, y = _rare_class_sample(n, seed=7)
        logits = np.log(proba)
        temperature, weights = models.calibrate_stage(logits, y, 3, seed=5)
        p = softmax(logits / temperature)
        once = models.tune_decision_weights(p, y, 3)
        expected = (
            models.tune_decision_weights(p, y, 3, bootstraps=models.DECISION_BOOTSTRAPS, seed=5)
            if bagged
            else once
        )
        assert np.array_equal(weights, expected)
        assert not bagged or not np.array_equal(weights, once)


def _tune_weights_plainly(proba: np.ndarray, y: np.ndarray, k: int, rounds: int = 3) -> np.ndarray:
    """The coordinate ascent written the obvious way: argmax of proba * trial each time."""
    weights = np.ones(k)

    def score(w: np.ndarray) -> float:
        return models.macro_f1(y, np.argmax(proba * w, axis=1), k)

    best = score(weights)
    for _ in range(rounds):
        improved = False
        for c in range(k):
            for g in np.exp(np.linspace(-1.5, 1.5, 13)):
                trial = weights.copy()
                trial[c] = weights[c] * g
                s = score(trial)
                if s > best + 1e-9:
                    best, weights, improved = s, trial, True
        if not improved:
            break
    return weights / weights.max()


def test_each_trial_of_a_sweep_is_the_argmax_ties_included() -> None:
    # probabilities in quarters and weights in halves: many rows tie exactly, and the
    # sweep must break every tie as argmax does (to the lower class index)
    rng = np.random.default_rng(0)
    proba = rng.integers(0, 5, size=(2_000, 4)) / 4.0
    weights = np.array([1.0, 0.5, 2.0, 1.0])
    trials = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
    for k in range(4):
        predict = models._sweep(proba, weights, k)
        for w in trials:
            trial = weights.copy()
            trial[k] = w
            assert np.array_equal(predict(w), np.argmax(proba * trial, axis=1)), (k, w)


@pytest.mark.parametrize("seed", range(4))
def test_the_weight_search_is_the_plain_one(seed: int) -> None:
    # the search skips recomputing the argmax per trial; it must find the same weights
    proba, y = _rare_class_sample(3_000, seed)
    if seed == 3:  # coarse probabilities: many rows tie exactly between classes
        proba = np.round(proba * 4) / 4 + 1e-3  # many rows tie between two classes
    assert np.array_equal(
        models.tune_decision_weights(proba, y, 3), _tune_weights_plainly(proba, y, 3)
    )
