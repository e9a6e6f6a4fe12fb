"""The compiled tree evaluator: LightGBM's raw scores exactly, additive path attributions.

Models are trained here on small random data built so that every branch of LightGBM's
numerical decision is used: NaN missing values sent left and sent right, zero as the
missing value, no missing value at all (NaN read as 0), a constant feature, single-leaf
trees and an early-stopped model. Rows are drawn with the values where a decision can go
wrong: NaN, signed zeros, values below LightGBM's zero threshold, infinities, and every
split threshold exactly and one ulp either side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.trees import (
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    ZERO_THRESHOLD,
    TreeEnsemble,
)
from training.models import DEFAULT_LGB_PARAMS

N_FEATURES = 8
SPECIAL = (
    np.nan,
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    ZERO_THRESHOLD,
    -ZERO_THRESHOLD,
    np.nextafter(ZERO_THRESHOLD, 1.0),
    1e300,
    -1e300,
    np.inf,
    -np.inf,
)


def _data(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Features with NaNs, zeros and a constant column; a 5-class label that uses them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 1] = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(2.0, n))  # many zeros
    X[:, 2] = 3.0  # constant: never split on
    X[:, 3] = rng.integers(-2, 3, n).astype(float)  # few values, zero among them
    nan = rng.random((n, N_FEATURES)) < 0.15
    nan[:, 2] = False
    X[nan] = np.nan
    # NaN in column 0 pushes the label up, in column 4 down: missing goes both ways.
    score = (
        np.nan_to_num(X[:, 0], nan=2.5)
        + np.where(X[:, 1] == 0.0, 1.0, -0.3 * np.nan_to_num(X[:, 1]))
        + 0.5 * np.nan_to_num(X[:, 3])
        + np.nan_to_num(X[:, 4], nan=-2.5)
        + rng.normal(scale=0.7, size=n)
    )
    y = np.digitize(score, np.quantile(score, [0.2, 0.4, 0.6, 0.8]))
    return X, y


def _train(params: dict[str, object], rounds: int, *, binary: bool, seed: int = 0) -> lgb.Booster:
    X, y = _data(seed)
    base: dict[str, object] = {
        "num_leaves": 7,
        "min_data_in_leaf": 10,
        "verbose": -1,
        "num_threads": 1,
    }
    if binary:
        base |= {"objective": "binary"}
        y = (y >= 3).astype(int)
    else:
        base |= {"objective": "multiclass", "num_class": 5}
    return lgb.train({**base, **params}, lgb.Dataset(X, y), rounds)


def _early_stopped() -> lgb.Booster:
    X, y = _data(1)
    Xv, yv = _data(2)
    params = {
        "objective": "multiclass",
        "num_class": 5,
        "num_leaves": 15,
        "learning_rate": 0.5,
        "verbose": -1,
        "num_threads": 1,
    }
    train = lgb.Dataset(X, y)
    booster = lgb.train(
        params,
        train,
        200,
        valid_sets=[lgb.Dataset(Xv, yv, reference=train)],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        # keep the trees after the best iteration: predict() and dump_model() must drop them
        keep_training_booster=True,
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    return booster


def _constant_target() -> lgb.Booster:
    X, _ = _data(3)
    return lgb.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, np.full(len(X), 1.5)),
        5,
    )


MODELS = {
    # binary, NaN is the missing value (LightGBM's default), sent left or right per split
    "binary_nan": lambda: _train({}, 40, binary=True),
    # binary, zero is the missing value (NaN read as zero)
    "binary_zero": lambda: _train({"zero_as_missing": True}, 40, binary=True),
    # binary without missing values: NaN read as 0 and compared to the threshold
    "binary_no_missing": lambda: _train({"use_missing": False}, 40, binary=True),
    # 5 classes, NaN missing, deeper trees
    "multiclass_nan": lambda: _train({"num_leaves": 15}, 30, binary=False),
    # 5 classes, zero as missing
    "multiclass_zero": lambda: _train({"zero_as_missing": True}, 30, binary=False),
    # the training package's parameters: bagging, feature fraction, L2, 31 leaves
    "multiclass_training_defaults": lambda: _train(
        {**DEFAULT_LGB_PARAMS, "num_threads": 1}, 30, binary=False
    ),
    # early stopping: predict() and dump_model() keep best_iteration trees only
    "multiclass_early_stopped": _early_stopped,
    # nothing to learn: single-leaf trees
    "regression_constant": _constant_target,
}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[lgb.Booster, TreeEnsemble]]:
    out = {}
    for name, make in MODELS.items():
        booster = make()
        out[name] = (booster, TreeEnsemble.from_booster(booster))
    return out


def _reference(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(X, raw_score=True)).reshape(len(X), -1)


def _hard_rows(ensemble: TreeEnsemble, seed: int, n: int = 400) -> np.ndarray:
    """Random rows mixing ordinary values, special values and exact split thresholds."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=3.0, size=(n, N_FEATURES))
    X[rng.random(X.shape) < 0.2] = 0.0
    X[rng.random(X.shape) < 0.2] = np.nan
    special = rng.random(X.shape) < 0.1
    X[special] = rng.choice(SPECIAL, special.sum())
    if ensemble.threshold.size:
        # exactly at a split's threshold and one ulp either side, on the split's feature
        for r in range(n):
            for _ in range(3):
                j = rng.integers(ensemble.threshold.size)
                step = rng.choice([-np.inf, 0.0, np.inf])
                t = ensemble.threshold[j]
                X[r, ensemble.split_feature[j]] = t if step == 0 else np.nextafter(t, step)
    X[0] = np.nan  # all missing
    X[1] = 0.0
    X[2] = np.inf
    X[3] = -np.inf
    X[4] = 1e-40
    return X


def test_the_models_cover_every_decision_branch(models):
    """The fixtures exercise what the parity tests claim to cover."""
    ensembles = [e for _, e in models.values()]
    missing = np.concatenate([e.missing_type for e in ensembles])
    assert {MISSING_NONE, MISSING_ZERO, MISSING_NAN} <= set(missing.tolist())
    for kind in (MISSING_NAN, MISSING_ZERO):  # missing sent left somewhere, right elsewhere
        left = np.concatenate([e.default_left[e.missing_type == kind] for e in ensembles])
        assert left.any() and not left.all()
    thresholds = np.concatenate([e.threshold for e in ensembles])
    assert (np.abs(thresholds) == ZERO_THRESHOLD).any()  # splits at LightGBM's zero edge
    assert np.isinf(thresholds).any()  # splits of NaN from every value
    assert all(not (e.split_feature == 2).any() for e in ensembles)  # constant feature unused
    constant = models["regression_constant"][1]
    assert constant.threshold.size == 0 and (constant.tree_root < 0).all()
    booster, early = models["multiclass_early_stopped"]
    assert early.num_iterations == booster.best_iteration


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_raw_scores_equal_lightgbm_exactly(models, name, seed):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, seed)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))


def test_raw_scores_equal_a_booster_reloaded_from_text(models):
    """Serving loads LightGBM text; its thresholds and leaves must be the dump's."""
    booster, ensemble = models["multiclass_nan"]
    reloaded = lgb.Booster(model_str=booster.model_to_string())
    X = _hard_rows(ensemble, 7)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(reloaded, X))
    np.testing.assert_array_equal(
        TreeEnsemble.from_booster(reloaded).raw_scores(X), ensemble.raw_scores(X)
    )


@pytest.mark.parametrize("name", ["binary_nan", "multiclass_zero"])
def test_dump_keeps_full_precision_of_the_text_model(models, name):
    """The JSON dump's thresholds and leaf values are the text model's doubles, bit for bit."""
    booster, ensemble = models[name]
    text = booster.model_to_string()

    def numbers(key: str) -> np.ndarray:
        lines = re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)
        return np.array([float(v) for line in lines for v in line.split()], dtype=np.float64)

    np.testing.assert_array_equal(ensemble.threshold, numbers("threshold"))
    np.testing.assert_array_equal(ensemble.leaf_value, numbers("leaf_value"))


value = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-5.0, 5.0),
)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["binary_nan", "binary_no_missing", "multiclass_zero"]), data=st.data())
def test_raw_scores_equal_lightgbm_on_any_row(models, name, data):
    booster, ensemble = models[name]
    thresholds = st.sampled_from(ensemble.threshold.tolist())
    near = st.builds(np.nextafter, thresholds, st.sampled_from([-np.inf, np.inf]))
    row = data.draw(st.lists(st.one_of(value, thresholds, near), min_size=8, max_size=8))
    X = np.array([row], dtype=np.float64)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))


@pytest.mark.parametrize("name", list(MODELS))
def test_contributions_sum_to_the_raw_score_of_each_output(models, name):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 3, n=200)
    raw = ensemble.raw_scores(X)
    for k in range(ensemble.num_outputs):
        contrib = ensemble.path_contributions(X, k)
        assert contrib.shape == (len(X), N_FEATURES + 1)
        np.testing.assert_allclose(contrib.sum(axis=1), raw[:, k], rtol=0, atol=1e-9)
    # one output per row: each row's predicted class
    pick = np.argmax(raw, axis=1)
    contrib = ensemble.path_contributions(X, pick)
    np.testing.assert_allclose(contrib.sum(axis=1), raw[np.arange(len(X)), pick], atol=1e-9)


@pytest.mark.parametrize("name", ["binary_nan", "multiclass_zero", "regression_constant"])
def test_one_walk_gives_raw_scores_and_every_outputs_contributions(models, name):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 8, n=100)
    raw, contrib = ensemble.raw_scores_and_contributions(X)
    np.testing.assert_array_equal(raw, _reference(booster, X))
    assert contrib.shape == (len(X), ensemble.num_outputs, N_FEATURES + 1)
    for k in range(ensemble.num_outputs):
        np.testing.assert_array_equal(contrib[:, k], ensemble.path_contributions(X, k))


@pytest.mark.parametrize("name", list(MODELS))
def test_bias_is_treeshap_expected_value(models, name):
    """Both weight a node's leaves by training rows: the bias columns agree at any depth."""
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 4, n=20)
    k = ensemble.num_outputs
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), k, -1)
    for c in range(k):
        ours = ensemble.path_contributions(X, c)[:, -1]
        np.testing.assert_allclose(ours, shap[:, c, -1], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("params", "binary"),
    [
        ({"num_leaves": 2}, True),  # binary stumps, NaN missing
        ({"num_leaves": 2, "zero_as_missing": True}, False),  # 5-class stumps, zero missing
        ({"max_depth": 1, "use_missing": False}, False),  # depth-1 trees without missing
    ],
)
def test_stump_contributions_equal_treeshap(params, binary):
    """With one split per tree, path attribution and TreeSHAP are the same numbers."""
    booster = _train(params, 25, binary=binary)
    ensemble = TreeEnsemble.from_booster(booster)
    X = _hard_rows(ensemble, 5, n=300)
    k = ensemble.num_outputs
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), k, -1)
    for c in range(k):
        np.testing.assert_allclose(ensemble.path_contributions(X, c), shap[:, c], rtol=0, atol=1e-9)


def test_deeper_trees_differ_from_treeshap(models):
    """The attribution is not TreeSHAP beyond stumps (the law above is not vacuous)."""
    booster, ensemble = models["multiclass_nan"]
    X = _hard_rows(ensemble, 6, n=50)
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), 5, -1)
    assert np.abs(ensemble.path_contributions(X, 0) - shap[:, 0]).max() > 1e-3


def test_categorical_model_is_refused():
    X, y = _data(0)
    X[:, 3] = np.abs(np.nan_to_num(X[:, 3]))
    booster = lgb.train(
        {
            "objective": "multiclass",
            "num_class": 5,
            "min_data_per_group": 5,
            "verbose": -1,
            "num_threads": 1,
        },
        lgb.Dataset(X, y, categorical_feature=[3]),
        10,
    )
    assert "'decision_type': '=='" in str(booster.dump_model())  # it split on the category
    with pytest.raises(ValueError, match="categorical split"):
        TreeEnsemble.from_booster(booster)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"linear_tree": True}, "linear tree"),  # leaves are linear models
        ({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}, "random-forest"),
    ],
)
def test_other_unsupported_models_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        TreeEnsemble.from_booster(_train(params, 3, binary=True))


class _EditedDump:
    """A booster whose JSON dump was edited: what ``from_booster`` reads, nothing else."""

    def __init__(self, booster: lgb.Booster, edit: Callable[[dict[str, Any]], None]) -> None:
        self._booster, self._edit = booster, edit

    def dump_model(self) -> dict[str, Any]:
        dump = self._booster.dump_model()
        self._edit(dump)
        return dump

    def model_to_string(self) -> str:
        return self._booster.model_to_string()


def _add_field(dump: dict[str, Any]) -> None:
    dump["tree_info"][1]["tree_structure"]["left_child"]["new_thing"] = 1


def _move_threshold(dump: dict[str, Any]) -> None:
    dump["tree_info"][0]["tree_structure"]["threshold"] += 1.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_add_field, r"tree 1 has fields .* \['new_thing'\]"),  # a field not implemented
        (_move_threshold, "disagree"),  # the dump and the text model differ
    ],
)
def test_unknown_or_inconsistent_dump_is_refused(models, edit, message):
    booster = _EditedDump(models["binary_nan"][0], edit)
    with pytest.raises(ValueError, match=message):
        TreeEnsemble.from_booster(booster)  # type: ignore[arg-type]


def test_infinite_threshold_is_kept(models):
    """A split of NaN from all values has threshold inf; the JSON dump writes 1e300."""
    booster, ensemble = models["multiclass_nan"]
    assert np.isinf(ensemble.threshold).any()
    assert "1e+300" in str(booster.dump_model())
    clamped = dataclasses.replace(ensemble, threshold=np.clip(ensemble.threshold, -1e300, 1e300))
    X = np.where(np.arange(N_FEATURES) == 2, 3.0, 1e301)[None, :]  # 1e301 <= inf, not <= 1e300
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))
    assert not np.array_equal(clamped.raw_scores(X), _reference(booster, X))


def test_bad_inputs_are_refused(models):
    _, ensemble = models["multiclass_nan"]
    with pytest.raises(ValueError, match="8 columns"):
        ensemble.raw_scores(np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"output must be in \[0, 5\)"):
        ensemble.path_contributions(np.zeros((2, 8)), 5)
    with pytest.raises(ValueError, match="one per row"):
        ensemble.path_contributions(np.zeros((2, 8)), np.array([0, 1, 2]))
    assert ensemble.raw_scores(np.zeros((0, 8))).shape == (0, 5)
