"""The oracle is exact (brute force agrees) and no plain classifier beats it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.simulator.config import Scenario
from customer_lifecycle.simulator.generate import simulate
from customer_lifecycle.simulator.metrics import accuracy, log_loss, macro_f1, roc_auc
from customer_lifecycle.simulator.oracle import posterior

AS_OF = pd.Timestamp("2024-01-07", tz="UTC")  # day 6 of the tiny scenario
HORIZON = 3


def _transition(sc: Scenario) -> np.ndarray:
    """Daily transition over (stage, active) then (stage, dormant), from the definition:
    go dormant with the stage's hazard, otherwise move with the stage's row."""
    a = sc.arrays()
    n = len(a.stages)
    t = np.zeros((2 * n, 2 * n))
    for s in range(n):
        t[s, :n] = (1 - a.dormancy[s]) * a.move[s]
        t[s, n + s] = a.dormancy[s]
        t[n + s, n + s] = 1.0
    return t


def _day_likelihood(sc: Scenario, day_events: pd.DataFrame, exposure: float) -> np.ndarray:
    """(2S, K) probability (density for amounts) of one day's Poisson events per state."""
    a = sc.arrays()
    n, n_k = len(a.stages), a.levels.size
    counts = day_events["event_type"].value_counts()
    out = np.zeros((2 * n, n_k))
    for s in range(n):
        for k in range(n_k):
            p = 1.0
            for j, etype in enumerate(a.event_types):
                mu = a.rates[s, j] * a.levels[k] * exposure
                c = int(counts.get(etype, 0))
                p *= math.exp(-mu) * mu**c / math.factorial(c)
            for amount in day_events.loc[day_events["event_type"] == "purchase", "amount"]:
                m, sig = a.amount_log_median[0, s], a.amount_sigma[0, s]
                z = (math.log(amount) - m) / sig
                p *= math.exp(-0.5 * z * z) / (amount * sig * math.sqrt(2 * math.pi))
            out[s, k] = p
    out[n:, :] = 1.0 if day_events.empty else 0.0  # dormant emits nothing
    return out


def _brute_force(sc: Scenario, events: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Enumerate every hidden path and activity level of one customer."""
    a = sc.arrays()
    n, n_k = len(a.stages), a.levels.size
    t = _transition(sc)
    ev = events[events["timestamp"] < AS_OF].sort_values("timestamp")
    day = ((ev["timestamp"] - AS_OF) // pd.Timedelta(days=1)).to_numpy()
    arrival, first = day[0], ev.iloc[0]
    days = list(range(arrival, 0))
    frac = (first["timestamp"] - (AS_OF + pd.Timedelta(days=int(arrival)))) / pd.Timedelta(days=1)
    like = []
    for d in days:
        rest = ev.iloc[1:][day[1:] == d]
        like.append(_day_likelihood(sc, rest, 1.0 - frac if d == arrival else 1.0))
    q = a.arrival_events[:, a.event_types.index(first["event_type"])]
    silent = np.exp(-np.outer(a.total_rates, a.levels))  # (S, K)

    # Probability of no event in the horizon from each state, by enumerating its futures.
    quiet = np.zeros((2 * n, n_k))
    for x0, k in itertools.product(range(2 * n), range(n_k)):
        for future in itertools.product(range(2 * n), repeat=HORIZON):
            f, prev = 1.0, x0
            for x in future:
                f *= t[prev, x] * (silent[x, k] if x < n else 1.0)
                prev = x
            quiet[x0, k] += f

    stage_mass = np.zeros(n)
    quiet_mass = 0.0

    def walk(i: int, state: int, k: int, p: float) -> None:
        nonlocal quiet_mass
        if p == 0.0:
            return  # an impossible path adds nothing (pruning keeps enumeration small)
        if i == len(days) - 1:
            stage_mass[state % n] += p
            quiet_mass += p * quiet[state, k]
            return
        for x in range(2 * n):
            walk(i + 1, x, k, p * t[state, x] * like[i + 1][x, k])

    for k in range(n_k):
        for s0 in range(n):  # active on the arrival day
            walk(0, s0, k, a.level_probs[k] * a.initial[s0] * q[s0] * like[0][s0, k])
    total = stage_mass.sum()
    return stage_mass / total, quiet_mass / total


def test_posterior_and_churn_equal_brute_force_enumeration(tiny: Scenario) -> None:
    data = simulate(tiny, customers=24, seed=11, as_of=[AS_OF], horizon_days=HORIZON)
    oracle = posterior(data.events, tiny, AS_OF, horizon_days=HORIZON).set_index("customer_id")
    # Enough variety to matter: purchases with amounts, customers with silent days.
    assert (data.events["event_type"] == "purchase").sum() >= 3
    checked = 0
    for cid, events in data.events.groupby("customer_id"):
        if events["timestamp"].min() >= AS_OF:
            assert cid not in oracle.index
            continue
        stages, churn = _brute_force(tiny, events)
        row = oracle.loc[cid]
        np.testing.assert_allclose(
            row[[f"p_{s}" for s in tiny.stages]].to_numpy(dtype=float), stages, rtol=0, atol=1e-9
        )
        assert row["churn_probability"] == pytest.approx(churn, abs=1e-9)
        checked += 1
    assert checked >= 15


def test_posterior_handles_hand_made_events_exactly(tiny: Scenario) -> None:
    t = AS_OF - pd.Timedelta(days=5)
    events = pd.DataFrame(
        {
            "customer_id": ["x"] * 6,
            "timestamp": [
                t + pd.Timedelta(hours=20),  # acquisition touch
                t + pd.Timedelta(hours=22),  # same day, after it
                t + pd.Timedelta(days=2, hours=1),
                t + pd.Timedelta(days=2, hours=3),
                t + pd.Timedelta(days=2, hours=5),
                t + pd.Timedelta(days=4, hours=12),
            ],
            "event_type": [
                "search_visit",
                "page_view",
                "product_view",
                "purchase",
                "purchase",
                "page_view",
            ],
            "amount": [np.nan, np.nan, np.nan, 61.5, 12.25, np.nan],
        }
    )
    stages, churn = _brute_force(tiny, events)
    row = posterior(events, tiny, AS_OF, horizon_days=HORIZON).iloc[0]
    got = row[[f"p_{s}" for s in tiny.stages]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, stages, rtol=0, atol=1e-9)
    assert row["churn_probability"] == pytest.approx(churn, abs=1e-9)
    # Two purchases on day 2 put the customer in the purchase stage that day.
    assert got.sum() == pytest.approx(1.0)


def test_posterior_is_point_in_time_and_ignores_ids_and_channels() -> None:
    data = simulate("default", customers=300, seed=5)
    as_of = data.plan.as_of[0]
    base = posterior(data.events, "default", as_of)
    later = data.events.copy()
    later.loc[later["timestamp"] >= as_of, "event_type"] = "purchase"
    later.loc[later["timestamp"] >= as_of, "amount"] = 1.0
    later["channel"] = "store"
    renamed = later.assign(customer_id="z" + later["customer_id"])
    other = posterior(renamed, "default", as_of)
    assert list(other["customer_id"]) == ["z" + c for c in base["customer_id"]]
    pd.testing.assert_frame_equal(
        base.drop(columns="customer_id"), other.drop(columns="customer_id"), check_exact=True
    )
    probs = base[[c for c in base.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert base["churn_probability"].between(0, 1).all()


def test_churn_probability_is_calibrated() -> None:
    data = simulate("subscription", customers=6000, seed=8)
    scores = posterior(data.events, "subscription", data.plan.as_of[0])
    merged = scores.merge(data.outcomes, on="customer_id")
    p = merged["churn_probability"].to_numpy()
    # Sum of independent Bernoulli(p): the churn count has variance sum p(1-p).
    tolerance = 5 * np.sqrt(np.sum(p * (1 - p)))
    assert abs(merged["churned"].sum() - p.sum()) < tolerance


def _count_features(data) -> tuple[pd.Index, np.ndarray]:  # type: ignore[no-untyped-def]
    as_of = data.plan.as_of[0]
    seen = data.events[data.events["timestamp"] < as_of]
    counts = pd.crosstab(seen["customer_id"], seen["event_type"]).reindex(
        columns=list(data.plan.arrays.event_types), fill_value=0
    )
    by = seen.groupby("customer_id")["timestamp"]
    recency = (as_of - by.max()).dt.total_seconds().reindex(counts.index) / 86400
    tenure = (as_of - by.min()).dt.total_seconds().reindex(counts.index) / 86400
    x = np.column_stack([np.log1p(counts.to_numpy()), np.log1p(recency), np.log1p(tenure)])
    return counts.index, x


def _fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent (weights incl. bias)."""
    x1 = np.column_stack([x, np.ones(len(x))])
    w = np.zeros((x1.shape[1], n_classes))
    onehot = np.eye(n_classes)[y]
    for _ in range(1500):
        p = _softmax(x1 @ w)
        w -= 0.5 * (x1.T @ (p - onehot) / len(x1) + 1e-3 * w)
    return w


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_oracle_scores_at_least_as_well_as_a_trained_classifier() -> None:
    train = simulate("default", customers=4000, seed=21)
    test = simulate("default", customers=4000, seed=22)
    stages = list(train.plan.arrays.stages)
    code = {s: i for i, s in enumerate(stages)}
    ids_tr, x_tr = _count_features(train)
    ids_te, x_te = _count_features(test)
    mean, sd = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-9
    x_tr, x_te = (x_tr - mean) / sd, (x_te - mean) / sd

    def truth(data, ids):  # type: ignore[no-untyped-def]
        lab = data.labels.set_index("customer_id").loc[ids, "stage"].map(code).to_numpy()
        churned = data.outcomes.set_index("customer_id").loc[ids, "churned"].to_numpy(bool)
        return lab, churned

    y_tr, c_tr = truth(train, ids_tr)
    y_te, c_te = truth(test, ids_te)
    w_stage = _fit_softmax(x_tr, y_tr, len(stages))
    w_churn = _fit_softmax(x_tr, c_tr.astype(int), 2)
    x1 = np.column_stack([x_te, np.ones(len(x_te))])
    clf_p = _softmax(x1 @ w_stage)
    clf_churn = _softmax(x1 @ w_churn)[:, 1]

    oracle = posterior(test.events, "default", test.plan.as_of[0]).set_index("customer_id")
    oracle = oracle.loc[ids_te]
    orc_p = oracle[[f"p_{s}" for s in stages]].to_numpy()
    orc_churn = oracle["churn_probability"].to_numpy()

    # The classifier learns something (well above chance) ...
    assert macro_f1(y_te, clf_p.argmax(axis=1)) > 0.35
    # ... and the oracle is at least as good on every score.
    assert accuracy(y_te, orc_p.argmax(axis=1)) >= accuracy(y_te, clf_p.argmax(axis=1))
    assert macro_f1(y_te, orc_p.argmax(axis=1)) >= macro_f1(y_te, clf_p.argmax(axis=1))
    assert log_loss(y_te, orc_p) <= log_loss(y_te, clf_p)
    assert roc_auc(c_te, orc_churn) >= roc_auc(c_te, clf_churn)
    assert np.mean((orc_churn - c_te) ** 2) <= np.mean((clf_churn - c_te) ** 2)
    # Stages are not trivially identifiable: even the oracle is far from perfect.
    assert macro_f1(y_te, orc_p.argmax(axis=1)) < 0.9
