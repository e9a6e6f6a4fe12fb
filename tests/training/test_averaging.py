"""Averaging boosters into one model: the mean raw score, read by LightGBM and our reader."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from customer_lifecycle.scoring.trees import TreeEnsemble
from customer_lifecycle.training.averaging import average_boosters


def _data(n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 5))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take their own branch
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int) + (np.nan_to_num(X[:, 1]) > 1)
    return X, y


def _boosters(objective: str, rounds: list[int]) -> tuple[np.ndarray, list[lgb.Booster]]:
    X, y = _data()
    params = {"objective": objective, "verbosity": -1, "num_leaves": 7, "bagging_freq": 1,
              "bagging_fraction": 0.7, "feature_fraction": 0.6}  # fmt: skip
    if objective == "multiclass":
        params["num_class"] = 3
    else:
        y = (y > 0).astype(int)
    return X, [
        lgb.train({**params, "seed": seed}, lgb.Dataset(X, y), n)
        for seed, n in enumerate(rounds, 1)
    ]


@pytest.mark.parametrize(
    ("objective", "rounds"),
    [
        ("multiclass", [30, 45, 1]),  # one tree per class and round; unequal rounds
        ("binary", [20, 20]),  # one output
    ],
)
def test_the_average_model_scores_the_mean_raw_score(objective: str, rounds: list[int]) -> None:
    X, boosters = _boosters(objective, rounds)
    merged = average_boosters(boosters)
    mean = np.mean([b.predict(X, raw_score=True) for b in boosters], axis=0)
    assert merged.num_trees() == sum(b.num_trees() for b in boosters)
    np.testing.assert_allclose(merged.predict(X, raw_score=True), mean, rtol=0, atol=1e-12)
    # the product's own tree reader parses it and agrees
    ours = TreeEnsemble.from_booster(merged).raw_scores(X)
    np.testing.assert_allclose(np.asarray(ours).reshape(mean.shape), mean, rtol=0, atol=1e-12)
    # LightGBM's TreeSHAP still adds up to the raw score
    contrib = merged.predict(X[:40], pred_contrib=True)
    outputs = 1 if mean.ndim == 1 else mean.shape[1]
    sums = np.asarray(contrib).reshape(40, outputs, -1).sum(axis=2).reshape(mean[:40].shape)
    np.testing.assert_allclose(sums, mean[:40], rtol=0, atol=1e-9)


def test_one_booster_is_itself_and_mismatches_are_refused() -> None:
    X, (multi,) = _boosters("multiclass", [5])
    assert average_boosters([multi]) is multi
    _, (binary,) = _boosters("binary", [5])
    with pytest.raises(ValueError, match="differ in outputs, objective or features"):
        average_boosters([multi, binary])
    with pytest.raises(ValueError, match="no booster"):
        average_boosters([])
