"""The independent scenario family and its exact oracle (benchmarks/scenario_family.py).

The oracle is checked against brute-force enumeration of every hidden path on tiny
chains built here from the scenario's knobs (not from the oracle's own sparse chain),
and against the generator's empirical frequencies on a medium sample.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from scipy.stats import poisson

from benchmarks.scenario_family import (
    SCENARIOS,
    START,
    T1_DAY,
    Scenario,
    Simulation,
    make_scenario,
    oracle,
    oracle_arrays,
    oracle_forecast,
    season,
    simulate,
)


def tiny(reactivation: float, seasonal: bool) -> Scenario:
    """Two stages of two phases, two activity levels, two event types."""
    return Scenario(
        name="tiny",
        stages=("a", "b"),
        default_taxonomy=False,
        event_types=("page_view", "purchase"),
        rates=np.array([[0.9, 0.1], [0.3, 0.7]]),
        phases=np.array([2, 2]),
        leave=np.array([0.5, 0.3]),
        jumps=np.array([[0.0, 1.0], [1.0, 0.0]]),
        initial=np.array([0.7, 0.3]),
        dormancy=np.array([0.1, 0.2]),
        reactivation=reactivation,
        dormant_factor=0.05,
        levels=np.array([0.5, 2.0]),
        level_weights=np.array([0.4, 0.6]),
        weekly=np.array([0.5, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0]) if seasonal else np.ones(7),
        yearly_amplitude=0.3 if seasonal else 0.0,
        yearly_peak=10,
        acquisition="page_view",
    )


def brute_force(sc: Scenario, counts: np.ndarray, arrival: int, horizon: int, ahead: int = 0):  # type: ignore[no-untyped-def]
    """Posterior of the stage ``ahead`` days after the last observed one (0: that day's)
    and P(silent horizon), by enumerating paths (``ahead <= horizon``).

    States: (stage, phase, dormant) written out from the knobs; ``counts[d]`` are the
    counts of day ``arrival + d`` (the acquisition event included on day 0).
    """
    states = [(s, j, False) for s in range(2) for j in range(2)] + [(s, 0, True) for s in range(2)]

    def move(x, y) -> float:  # type: ignore[no-untyped-def]
        (s, j, dm), (t, i, dm2) = x, y
        if dm:
            stay = dm2 and t == s
            back = not dm2 and t == s and i == 0
            return (1 - sc.reactivation) * stay + sc.reactivation * back
        h, q = sc.dormancy[s], sc.leave[s]
        if dm2:
            return h if t == s else 0.0
        if (t, i) == (s, j):
            return (1 - h) * (1 - q)
        if j == 0 and (t, i) == (s, 1):
            return (1 - h) * q
        if j == 1 and i == 0:
            return (1 - h) * q * sc.jumps[s, t]
        return 0.0

    n_obs = len(counts)
    mult = season(sc, arrival + n_obs + horizon)
    step = np.array([[move(x, y) for y in states] for x in states])
    acq = sc.event_types.index(sc.acquisition)
    post = np.zeros(2)
    evidence = silent = 0.0
    for lv, w in zip(sc.levels, sc.level_weights, strict=True):
        # likelihood of each day's counts (observed days) or of silence (horizon days)
        lik = np.ones((n_obs + horizon, len(states)))
        for d in range(n_obs + horizon):
            for x, (s, _, dm) in enumerate(states):
                lam = sc.rates[s] * lv * mult[arrival + d] * (sc.dormant_factor if dm else 1.0)
                if d < n_obs:
                    c = counts[d].copy()
                    c[acq] -= d == 0
                    lik[d, x] = np.prod(poisson.pmf(c, lam))
                else:
                    lik[d, x] = np.exp(-lam.sum())
        for path in itertools.product(range(len(states)), repeat=n_obs + horizon):
            s0, j0, dm0 = states[path[0]]
            p = w * (sc.initial[s0] if j0 == 0 and not dm0 else 0.0)
            for a, b in itertools.pairwise(path):
                p *= step[a, b]
            if p == 0:
                continue
            observed = p * np.prod([lik[d, path[d]] for d in range(n_obs)])
            # the horizon's moves sum to one over its paths, so the observed part alone
            # summed over all paths is the evidence
            evidence += observed
            silent += observed * np.prod([lik[d, path[d]] for d in range(n_obs, n_obs + horizon)])
            post[states[path[n_obs - 1 + ahead]][0]] += observed
    return post / post.sum(), silent / evidence


@pytest.mark.parametrize(
    ("reactivation", "seasonal"), [(0.0, False), (0.25, True)], ids=["absorbing", "seasonal"]
)
def test_oracle_equals_brute_force_on_tiny_chains(reactivation: float, seasonal: bool) -> None:
    sc = tiny(reactivation, seasonal)
    arrival, horizon = 5, 2
    cases = [
        np.array([[1, 0], [0, 0], [2, 1]]),
        np.array([[2, 1], [0, 2], [0, 0]]),
        np.array([[1, 0], [0, 0], [0, 0]]),
    ]
    for counts in cases:
        day, typ = np.nonzero(counts)
        reps = counts[day, typ]
        day, typ = np.repeat(day, reps) + arrival, np.repeat(typ, reps)
        # an event on the as_of day must be ignored by the filter
        day, typ = np.append(day, arrival + len(counts)), np.append(typ, 1)
        post, silent = oracle_arrays(
            sc,
            day,
            typ,
            np.zeros(len(day), dtype=np.int64),
            np.array([arrival]),
            np.array([arrival + len(counts)]),
            horizon=horizon,
        )
        want_post, want_silent = brute_force(sc, counts, arrival, horizon)
        np.testing.assert_allclose(post[0], want_post, rtol=1e-9)
        assert silent[0] == pytest.approx(want_silent, rel=1e-9)


def test_oracle_forecast_equals_brute_force_on_tiny_chains() -> None:
    sc = tiny(0.25, True)
    arrival, ahead = 5, 2
    counts = [np.array([[1, 0], [0, 0], [2, 1]]), np.array([[1, 0], [0, 3], [0, 0]])]
    rows = []
    for c, table in enumerate(counts):
        day, typ = np.nonzero(table)
        reps = table[day, typ]
        rows.append(
            pd.DataFrame(
                {"customer": c, "day": np.repeat(day, reps) + arrival, "type": np.repeat(typ, reps)}
            )  # fmt: skip
        )
    events = pd.concat(rows, ignore_index=True).assign(second=0, amount=np.nan)
    as_of = arrival + 3
    n = len(counts)
    sim = Simulation(
        sc,
        0,
        np.full(n, arrival),
        np.zeros(n, dtype=np.int64),
        np.full((n, as_of + ahead), -1, dtype=np.int8),
        np.zeros((n, as_of + ahead), dtype=bool),
        events,
    )
    got = oracle_forecast(sim, np.array([1, 0]), as_of, ahead=ahead)
    for row, c in enumerate([1, 0]):
        want, _ = brute_force(sc, counts[c], arrival, ahead, ahead=ahead)
        np.testing.assert_allclose(got[row], want, rtol=1e-9)
    # zero days ahead is the filter's own posterior
    np.testing.assert_allclose(
        oracle_forecast(sim, np.array([0, 1]), as_of, ahead=0),
        oracle(sim, np.array([0, 1]), as_of)[[f"p_{s}" for s in sc.stages]].to_numpy(),
        rtol=1e-12,
    )


def test_oracle_forecast_is_calibrated_and_beats_persistence() -> None:
    """On the generator: the mean forecast per stage matches the share of customers in it
    60 days later, and the forecast scores a lower log loss than today's posterior."""
    sc = make_scenario("saas_reactivating", 12)
    sim = simulate(sc, 3_000, 12, days=360, arrivals_until=300)
    here = np.flatnonzero(sim.arrival < 300)
    forecast = oracle_forecast(sim, here, 300, ahead=60)
    future = sim.labels_at(360)[here]
    assert (future != sim.labels_at(300)[here]).mean() > 0.1  # enough customers move
    for s, stage in enumerate(sc.stages):
        p = forecast[:, s]
        se = np.sqrt(np.sum(p * (1 - p))) / len(p)
        assert abs(p.mean() - (future == s).mean()) < 4 * se + 1e-3, stage
    now = oracle(sim, here, 300)[[f"p_{s}" for s in sc.stages]].to_numpy()
    loss = [
        -np.mean(np.log(np.maximum(p[np.arange(len(p)), future], 1e-15))) for p in (forecast, now)
    ]
    assert loss[0] < loss[1]
    with pytest.raises(ValueError, match="simulated days"):
        sim.labels_at(361)


def test_same_seed_same_simulation_and_another_seed_differs() -> None:
    sc = make_scenario("saas_reactivating", 5)
    a, b = simulate(sc, 300, 5), simulate(sc, 300, 5)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert a.stage.tobytes() == b.stage.tobytes()
    other = simulate(make_scenario("saas_reactivating", 6), 300, 6)
    assert not other.events.equals(a.events)
    assert not np.allclose(make_scenario("b2b_slow", 1).rates, make_scenario("b2b_slow", 2).rates)


@pytest.mark.parametrize("name", SCENARIOS)
def test_event_contract(name: str) -> None:
    sim = simulate(make_scenario(name, 3), 400, 3)
    frame = sim.event_frame()
    assert set(frame["event_type"]) <= set(CANONICAL_EVENT_TYPES)
    assert (
        frame.groupby("customer_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    )
    first = frame.groupby("customer_id")["timestamp"].min()
    arrival = pd.Series(START + pd.to_timedelta(sim.arrival, unit="D"), index=sim.ids)
    assert (first.sort_index().dt.floor("D") == arrival.sort_index()).all()
    purchases = frame["event_type"] == "purchase"
    assert frame.loc[purchases, "amount"].gt(0).all()
    assert frame.loc[~purchases, "amount"].isna().all()
    # labels exist exactly for customers who arrived before the snapshot
    labels = sim.labels_at(T1_DAY)
    assert ((labels >= 0) == (sim.arrival < T1_DAY)).all()
    assert labels.max() < len(sim.scenario.stages)


@pytest.mark.parametrize("name", ["semimarkov5", "saas_reactivating"])
def test_oracle_is_calibrated_on_the_generator(name: str) -> None:
    """Mean posterior per stage and mean churn probability match the simulated rates."""
    sc = make_scenario(name, 11)
    # a shorter simulation and horizon than the protocol's keep the test quick
    sim = simulate(sc, 3_000, 11, days=400, arrivals_until=300)
    here = np.flatnonzero(sim.arrival < 300)
    out = oracle(sim, here, 300, horizon=60)
    labels = sim.labels_at(300)[here]
    for s, stage in enumerate(sc.stages):
        p = out[f"p_{stage}"].to_numpy()
        se = np.sqrt(np.sum(p * (1 - p))) / len(p)
        assert abs(p.mean() - (labels == s).mean()) < 4 * se + 1e-3, stage
    p = out["churn_probability"].to_numpy()
    churned = sim.churned(300, horizon=60)[here]
    se = np.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(p.mean() - churned.mean()) < 4 * se + 1e-3
    # and the posterior is informative: its argmax beats always guessing the commonest stage
    post = out[[f"p_{s}" for s in sc.stages]].to_numpy()
    assert (post.argmax(1) == labels).mean() > (labels == np.bincount(labels).argmax()).mean()


@pytest.mark.slow
def test_protocol_end_to_end(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.quality import protocol

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    (row,) = protocol("markov3", 4, work=tmp_path, labelled_sizes=[1_200], customers=2_000)
    assert row["scored"] >= 500
    assert row["oracle_f1"] > row["majority_f1"]
    assert 0.5 < row["oracle_auc"] <= 1.0
    assert 0.0 < row["model_f1"] <= 1.0
    # the default model forecasts, and enough customers change stage for it to matter
    assert row["forecast"]
    assert 0.02 < row["moved"] < 0.9
    assert np.isfinite([row["next_logloss"], row["next_f1"], row["next_ece"]]).all()
    # the exact forecast beats the model's current stage probabilities taken as a forecast
    assert row["oracle_next_logloss"] < row["persist_logloss"]


def test_forecast_scores() -> None:
    from benchmarks.quality import forecast_scores

    rng = np.random.default_rng(0)
    n, k = 20_000, 3
    proba = rng.dirichlet(np.ones(k), size=n)
    # truth drawn from the forecast itself: calibrated by construction
    truth = (rng.random(n)[:, None] > np.cumsum(proba, axis=1)).sum(1)
    fair = forecast_scores(truth, proba)
    assert fair["ece"] < 0.02 and fair["share_gap"] < 0.02
    sharp = forecast_scores(truth, proba**4 / (proba**4).sum(1, keepdims=True))
    assert sharp["ece"] > 0.1 and sharp["logloss"] > fair["logloss"]
    assert forecast_scores(truth, np.full((n, k), 1 / k))["logloss"] == pytest.approx(np.log(k))
    exact = forecast_scores(truth, np.eye(k)[truth])
    assert exact["f1"] == 1.0 and exact["ece"] < 1e-12 and exact["logloss"] < 1e-12
