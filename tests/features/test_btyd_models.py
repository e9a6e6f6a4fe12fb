"""BTYD value models in features.btyd, checked against Monte Carlo of their generative processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from customer_lifecycle.features.btyd import (
    BGNBD,
    VALUE_TIER_SHARES,
    GammaGamma,
    TierThresholds,
    expected_spend,
    predict_value,
    tier_thresholds,
    value_tier,
)

GG = GammaGamma(p=6.25, q=3.74, v=15.44)  # the CDNOW fit of Fader & Hardie's note
BG = BGNBD(r=2.0, alpha=40.0, a=0.8, b=2.5)


def _ratio_estimate(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Self-normalised importance estimate ``sum(num) / sum(den)`` and its standard error."""
    est = float(num.sum() / den.sum())
    se = float(np.sqrt(np.sum((num - est * den) ** 2)) / den.sum())
    return est, se


@pytest.mark.parametrize(("x", "m"), [(0, np.nan), (1, 80.0), (3, 12.0), (10, 25.0)])
def test_conditional_expected_spend_matches_monte_carlo_posterior(x, m):
    rng = np.random.default_rng(11)
    n = 1_000_000
    nu = rng.gamma(GG.q, 1.0 / GG.v, n)
    # The mean of x spends given nu is Gamma(p x, rate nu x): weight each draw of nu by
    # that density at m (the factors without nu cancel), then draw a future spend.
    log_w = GG.p * x * np.log(nu) - nu * x * (0.0 if x == 0 else m)
    w = np.exp(log_w - log_w.max())
    future = rng.gamma(GG.p, 1.0 / nu)
    est, se = _ratio_estimate(w * future, w)
    predicted = float(GG.conditional_expected_spend(x, m))
    assert se < 0.02 * predicted, "too few effective draws to test anything"
    assert abs(est - predicted) < 4 * se, f"MC {est:.3f} +- {se:.3f}, model {predicted:.3f}"


def test_conditional_expected_spend_shrinks_towards_the_population_mean():
    x = np.array([0, 1, 5, 50, 5_000])
    got = GG.conditional_expected_spend(x, np.full(5, 100.0))
    assert got[0] == pytest.approx(GG.population_mean_spend)
    # more purchases, more weight on the customer's own mean of 100
    assert np.all(np.diff(got) > 0)
    assert GG.population_mean_spend < got[1] and got[-1] == pytest.approx(100.0, rel=1e-3)


def test_conditional_expected_spend_refuses_bad_spend():
    with pytest.raises(ValueError, match="mean_spend must be finite and > 0"):
        GG.conditional_expected_spend([2, 1], [10.0, 0.0])
    with pytest.raises(ValueError, match="mean_spend must be finite and > 0"):
        GG.conditional_expected_spend([2], [np.nan])
    with pytest.raises(ValueError, match="whole numbers"):
        GG.conditional_expected_spend([1.5], [10.0])


def _posterior_monte_carlo(
    model: BGNBD, x: int, t_x: float, T: float, h: float, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prior draws weighted by the history's likelihood, and their simulated future.

    Returns the weights of "still active at T" and of "dropped after the last purchase",
    the number of purchases in ``(T, T + h]`` and the waiting time to the next purchase
    of the active branch (a dropped customer never buys again).
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    # x purchases by t_x, survived each dropout, and no purchase up to T ...
    log_active = x * np.log1p(-p) + x * np.log(lam) - lam * T
    # ... or dropped right after the x-th purchase (only possible when x >= 1)
    if x > 0:
        log_dropped = np.log(p) + (x - 1) * np.log1p(-p) + x * np.log(lam) - lam * t_x
    else:
        log_dropped = np.full(n, -np.inf)
    top = max(log_active.max(), log_dropped.max())
    w_active, w_dropped = np.exp(log_active - top), np.exp(log_dropped - top)

    first_wait = rng.exponential(1.0, n) / lam
    count = np.zeros(n)
    t = first_wait.copy()
    idx = np.arange(n)
    while idx.size:
        idx = idx[t[idx] <= h]
        count[idx] += 1
        idx = idx[rng.random(idx.size) >= p[idx]]  # dropout after each purchase
        t[idx] += rng.exponential(1.0, idx.size) / lam[idx]
    return w_active, w_dropped, count, first_wait


HISTORIES = [(0, 0.0, 30.0), (3, 80.0, 100.0), (6, 95.0, 120.0), (1, 50.0, 60.0)]


@pytest.mark.parametrize(("x", "t_x", "T"), HISTORIES)
def test_expected_purchases_and_median_wait_match_monte_carlo(x, t_x, T):
    h = 90.0
    w_a, w_d, count, wait = _posterior_monte_carlo(BG, x, t_x, T, h, 400_000, seed=x + 1)
    total = w_a + w_d

    alive, se = _ratio_estimate(w_a, total)
    assert abs(alive - float(BG.p_alive(x, t_x, T))) < 4 * se + 1e-12

    est, se = _ratio_estimate(w_a * count, total)
    predicted = float(BG.expected_purchases(h, x, t_x, T))
    assert se < 0.02 * predicted
    assert abs(est - predicted) < 4 * se, f"MC {est:.4f} +- {se:.4f}, model {predicted:.4f}"

    t_star = float(BG.median_days_to_next_purchase(x, t_x, T))
    assert 0 < t_star < 1_095
    bought, se = _ratio_estimate(w_a * (wait <= t_star), total)
    assert abs(bought - 0.5) < 4 * se, f"P(bought by t*) = {bought:.4f} +- {se:.4f}"


def test_lapsed_customer_is_not_expected_to_buy_again():
    x, t_x, T = 2, 20.0, 200.0
    w_a, w_d, _, _ = _posterior_monte_carlo(BG, x, t_x, T, 0.0, 400_000, seed=5)
    alive, se = _ratio_estimate(w_a, w_a + w_d)
    assert alive + 4 * se < 0.5  # never buying again is more likely than not
    assert np.isnan(BG.median_days_to_next_purchase(x, t_x, T))


def test_median_wait_inverts_p_no_purchase():
    rng = np.random.default_rng(3)
    n = 2_000
    x = rng.integers(0, 40, n).astype(float)
    T = rng.uniform(1.0, 2_000.0, n)
    t_x = np.where(x > 0, rng.uniform(0.01, 1.0, n) * T, 0.0)
    for model in (BG, BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5), BGNBD(30.0, 3.0, 0.2, 9.0)):
        days = model.median_days_to_next_purchase(x, t_x, T, max_days=1e12)
        has = ~np.isnan(days)
        alive = model.p_alive(x, t_x, T)
        # NaN exactly where buying again at all is not more likely than not
        np.testing.assert_array_equal(has, alive > 0.5)
        assert has.sum() > 100
        silent = model.p_no_purchase(days[has], x[has], t_x[has], T[has])
        np.testing.assert_allclose(silent, 0.5, atol=1e-9)


def test_median_wait_is_capped():
    x, t_x, T = [0, 3], [0.0, 80.0], [30.0, 100.0]
    uncapped = BG.median_days_to_next_purchase(x, t_x, T)
    cap = float(np.mean(uncapped))  # between the two
    capped = BG.median_days_to_next_purchase(x, t_x, T, max_days=cap)
    assert np.isnan(capped[uncapped > cap]).all()
    np.testing.assert_array_equal(capped[uncapped <= cap], uncapped[uncapped <= cap])
    with pytest.raises(ValueError, match="max_days"):
        BG.median_days_to_next_purchase(x, t_x, T, max_days=-1.0)


def test_predict_value_leaves_never_buyers_to_the_caller():
    x = np.array([0.0, 3.0, 0.0, 1.0, np.nan])
    t_x = np.array([0.0, 80.0, np.nan, 50.0, np.nan])
    T = np.array([30.0, 100.0, np.nan, 400.0, np.nan])
    m = np.array([np.nan, 25.0, np.nan, 40.0, np.nan])
    out = predict_value(BG, GG, x, t_x, T, m, horizon_days=180.0)
    never = np.isnan(T)
    assert out.loc[never].isna().all().all()
    b = ~never
    np.testing.assert_allclose(out["p_alive"][b], BG.p_alive(x[b], t_x[b], T[b]))
    np.testing.assert_allclose(
        out["expected_spend"][b], expected_spend(BG, GG, 180.0, x[b], t_x[b], T[b], m[b])
    )
    np.testing.assert_allclose(
        out["expected_spend"][b],
        BG.expected_purchases(180.0, x[b], t_x[b], T[b])
        * GG.conditional_expected_spend(x[b], m[b]),
    )
    np.testing.assert_allclose(
        out["days_to_next_purchase"][b],
        BG.median_days_to_next_purchase(x[b], t_x[b], T[b], max_days=540.0),
    )
    with pytest.raises(ValueError, match="frequency must be 0"):
        predict_value(BG, GG, [2.0], [np.nan], [np.nan], [10.0])


def _continuous_spend(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(3.0, 1.5, n)


def test_tier_shares_match_the_cut_points():
    spend = _continuous_spend(200_001, seed=1)
    tiers = value_tier(spend, tier_thresholds(spend))
    labels = ["top_1", "top_5", "top_10", "top_25", "top_50"]
    n = spend.size
    for share, label in zip(VALUE_TIER_SHARES, labels, strict=True):
        at_or_above = np.isin(tiers, labels[: labels.index(label) + 1]).sum()
        assert at_or_above == int(np.ceil(share * n))
    assert set(np.unique(tiers)) == {*labels, "rest"}
    # the highest spends are in the top tier, the lowest in the rest
    order = np.argsort(spend)
    assert tiers[order[-1]] == "top_1" and tiers[order[0]] == "rest"


def test_thresholds_from_one_sample_apply_to_another():
    reference = tier_thresholds(_continuous_spend(100_000, seed=2))
    other = _continuous_spend(100_000, seed=3)
    tiers = value_tier(other, reference)
    labels = reference.labels
    for i, share in enumerate(reference.shares):
        observed = np.isin(tiers, labels[: i + 1]).mean()
        # sampling error of both the reference quantile and the new sample
        se = np.sqrt(2 * share * (1 - share) / other.size)
        assert abs(observed - share) < 4 * se, f"{labels[i]}: {observed:.4f} vs {share}"
    # chunks of a population get the tiers of the whole
    chunks = np.concatenate([value_tier(c, reference) for c in np.array_split(other, 7)])
    np.testing.assert_array_equal(chunks, tiers)


def test_ties_go_to_the_higher_tier_and_nan_is_unknown():
    spend = np.array([5.0, 1.0, 5.0, 5.0, np.nan, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    th = tier_thresholds(spend, (0.1, 0.5))
    tiers = value_tier(spend, th)
    assert list(tiers[spend == 5.0]) == ["top_10"] * 3  # three tied, all in the top 10 %
    assert tiers[4] == "unknown"
    for value in np.unique(spend[~np.isnan(spend)]):
        assert len(set(tiers[spend == value])) == 1
    perm = np.random.default_rng(0).permutation(spend.size)
    np.testing.assert_array_equal(
        value_tier(spend[perm], tier_thresholds(spend[perm], (0.1, 0.5))), tiers[perm]
    )


def test_ties_can_stay_below_so_no_tier_overfills():
    # a block of equal spends (a fill for customers without history) straddles both cuts
    spend = np.array([9.0, 8.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 0.5])
    th = tier_thresholds(spend, (0.1, 0.5), ties="lower")
    tiers = value_tier(spend, th)
    assert list(tiers) == ["top_10", "top_50", *["rest"] * 8]
    for i, share in enumerate(th.shares):
        assert np.isin(tiers, th.labels[: i + 1]).mean() <= share
    # without ties both rules agree
    distinct = _continuous_spend(1_000, seed=5)
    assert tier_thresholds(distinct, ties="lower") == tier_thresholds(distinct)
    # the default lifts the block: 8.0 and the six 3.0s are all in the top 50 %
    assert (value_tier(spend, tier_thresholds(spend, (0.1, 0.5))) == "top_50").sum() == 7
    with pytest.raises(ValueError, match="ties must be"):
        tier_thresholds(spend, ties="random")


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ((0.05, 0.01), "strictly increasing"),
        ((0.1, 0.1), "strictly increasing"),
        ((0.0, 0.5), "strictly between 0 and 1"),
        ((0.5, 1.0), "strictly between 0 and 1"),
        ((-0.1,), "strictly between 0 and 1"),
        ((float("nan"),), "strictly between 0 and 1"),
        ((), "must not be empty"),
        (("a",), "sequence of numbers"),
    ],
)
def test_bad_tier_shares_are_refused_with_one_line(shares, message):
    with pytest.raises(ValueError, match=message) as info:
        tier_thresholds([1.0, 2.0, 3.0], shares)
    assert "\n" not in str(info.value)


def test_tier_thresholds_refuse_empty_and_infinite_spend():
    with pytest.raises(ValueError, match="without any predicted spend"):
        tier_thresholds([np.nan, np.nan])
    with pytest.raises(ValueError, match="infinite"):
        tier_thresholds([1.0, np.inf])


def test_tier_thresholds_round_trip_and_refuse_hostile_dicts():
    th = tier_thresholds(_continuous_spend(1_000, seed=4))
    assert TierThresholds.from_dict(json.loads(json.dumps(th.to_dict()))) == th
    good = th.to_dict()
    for bad in (
        {**good, "extra": 1},
        {"shares": good["shares"]},
        {**good, "thresholds": good["thresholds"][:-1]},
        {**good, "thresholds": good["thresholds"][::-1]},  # increasing
        {**good, "thresholds": [float("nan")] * 5},
        {**good, "shares": "0.1"},
        {**good, "shares": [True] * 5},
        [1, 2],
    ):
        with pytest.raises(ValueError) as info:
            TierThresholds.from_dict(bad)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)


def test_parameters_round_trip_through_json():
    assert GammaGamma.from_dict(json.loads(json.dumps(GG.to_dict()))) == GG
    assert BGNBD.from_dict(json.loads(json.dumps(BG.to_dict()))) == BG


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"p": float("nan"), "q": 3.0, "v": 1.0}, "p must be a finite number > 0"),
        ({"p": 1.0, "q": 3.0, "v": -1.0}, "v must be a finite number > 0"),
        ({"p": 1.0, "q": 1.0, "v": 1.0}, "q must be > 1"),
        ({"p": 1.0, "q": 0.5, "v": 1.0}, "q must be > 1"),
        ({"p": 1.0, "q": float("inf"), "v": 1.0}, "q must be a finite number > 0"),
        ({"p": 1.0, "q": 3.0}, "exactly the keys"),
        ({"p": 1.0, "q": 3.0, "v": 1.0, "r": 1.0}, "exactly the keys"),
        ({"p": "1.0", "q": 3.0, "v": 1.0}, "must be a number"),
        ({"p": None, "q": 3.0, "v": 1.0}, "must be a number"),
        ({"p": True, "q": 3.0, "v": 1.0}, "must be a number"),
        ({"p": [1.0], "q": 3.0, "v": 1.0}, "must be a number"),
        ([("p", 1.0)], "must be a mapping"),
    ],
)
def test_gamma_gamma_from_dict_refuses_broken_input_with_one_line(data, message):
    with pytest.raises(ValueError, match=message) as info:
        GammaGamma.from_dict(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        {"r": 1.0, "alpha": float("nan"), "a": 1.0, "b": 1.0},
        {"r": -1.0, "alpha": 1.0, "a": 1.0, "b": 1.0},
        {"r": 1.0, "alpha": 1.0, "a": 1.0},
        {"r": 1.0, "alpha": 1.0, "a": 1.0, "b": 1.0, "p": 1.0},
        {"r": "1", "alpha": 1.0, "a": 1.0, "b": 1.0},
        {"r": {}, "alpha": 1.0, "a": 1.0, "b": 1.0},
        "r=1",
    ],
)
def test_bgnbd_from_dict_refuses_broken_input_with_one_line(data):
    with pytest.raises(ValueError) as info:
        BGNBD.from_dict(data)
    assert "\n" not in str(info.value)
