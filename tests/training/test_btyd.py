"""BG/NBD and Gamma-Gamma: likelihood, predictions and fit, checked by simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from customer_lifecycle.features import btyd as models
from customer_lifecycle.training.btyd import (
    BGNBD,
    GammaGamma,
    _gg_nll_and_grad,
    _nll_and_grad,
    fit_bgnbd,
    fit_gamma_gamma,
    spend_frequency_correlation,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special

TRUE = BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5)
HORIZON = 90.0


def simulate(
    model: BGNBD, n: int, seed: int, *, horizon: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw customers from the BG/NBD process; return ``x, t_x, T`` and future purchases.

    Each customer is observed from the first purchase (time 0) to an age ``T`` drawn
    uniformly in [30, 365] days; purchases in ``(T, T + horizon]`` are counted apart.
    """
    rng = np.random.default_rng(seed)
    lam = np.maximum(rng.gamma(model.r, 1.0 / model.alpha, n), 1e-300)
    p = rng.beta(model.a, model.b, n)
    T = rng.uniform(30.0, 365.0, n)
    end = T + horizon
    t = np.zeros(n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    future = np.zeros(n)
    idx = np.arange(n)  # customers still active
    while idx.size:
        t_new = t[idx] + rng.exponential(1.0, idx.size) / lam[idx]
        inside = t_new <= end[idx]
        idx, t_new = idx[inside], t_new[inside]
        t[idx] = t_new
        calib = t_new <= T[idx]
        x[idx[calib]] += 1
        t_x[idx[calib]] = t_new[calib]
        future[idx[~calib]] += 1
        # dropout right after each repeat purchase
        idx = idx[rng.random(idx.size) >= p[idx]]
    return x, t_x, T, future


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return simulate(TRUE, 20_000, seed=7, horizon=HORIZON)


def test_fit_recovers_parameters_within_sampling_error(population):
    x, t_x, T, _ = population
    fitted = fit_bgnbd(x, t_x, T)
    est = np.log([fitted.r, fitted.alpha, fitted.a, fitted.b])
    truth = np.log([TRUE.r, TRUE.alpha, TRUE.a, TRUE.b])

    # Observed information of the total log-likelihood on log-parameters, by central
    # differences of the analytic gradient (mean NLL, hence the factor n).
    w = np.ones_like(x)
    step = 1e-4
    hess = np.empty((4, 4))
    for j in range(4):
        e = np.zeros(4)
        e[j] = step
        g_plus = _nll_and_grad(est + e, x, t_x, T, w, 0.0)[1]
        g_minus = _nll_and_grad(est - e, x, t_x, T, w, 0.0)[1]
        hess[:, j] = (g_plus - g_minus) / (2 * step) * x.size
    hess = 0.5 * (hess + hess.T)
    se = np.sqrt(np.diag(np.linalg.inv(hess)))

    assert (se < 0.25).all(), f"the sample is too small to test anything: se={se}"
    z = (est - truth) / se
    assert np.abs(z).max() < 4.0, f"estimates {fitted} vs truth {TRUE}, z={z}"


def test_fit_with_weights_equals_fit_on_repeated_rows(population):
    x, t_x, T, _ = population
    sub = slice(0, 2_000)
    rows = (x[sub], t_x[sub], T[sub])
    doubled = fit_bgnbd(*(np.concatenate([v, v[:500]]) for v in rows))
    weights = np.ones(2_000)
    weights[:500] = 2.0
    weighted = fit_bgnbd(*rows, weights=weights)
    np.testing.assert_allclose(
        list(weighted.to_dict().values()), list(doubled.to_dict().values()), rtol=1e-3
    )


def test_gradient_matches_finite_differences(population):
    x, t_x, T, _ = population
    x, t_x, T = x[:3_000], t_x[:3_000], T[:3_000]
    w = np.random.default_rng(0).uniform(0.5, 2.0, x.size)
    for point in ([0.25, 4.0, 0.8, 2.5], [1.3, 40.0, 2.0, 0.7], [0.05, 0.5, 0.2, 9.0]):
        lp = np.log(point)
        grad = _nll_and_grad(lp, x, t_x, T, w, 1e-3)[1]
        num = optimize.approx_fprime(lp, lambda v: _nll_and_grad(v, x, t_x, T, w, 1e-3)[0], 1e-7)
        np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-6)


def _likelihood_by_integration(m: BGNBD, x: int, t_x: float, T: float) -> float:
    """Integrate the individual likelihood over the Gamma and Beta priors numerically.

    Substituting ``lambda = s^(1/r)`` and ``p = v^(1/a)`` removes the prior densities'
    singularities at zero: ``lambda^(r-1) d lambda = ds / r``, ``p^(a-1) dp = dv / a``.
    """
    norm = m.alpha**m.r / (special.gamma(m.r) * m.r) / (special.beta(m.a, m.b) * m.a)

    def integrand(s: float, v: float) -> float:
        lam, p = s ** (1.0 / m.r), v ** (1.0 / m.a)
        active = (1 - p) ** x * lam**x * np.exp(-lam * T)
        dropped = p * (1 - p) ** (x - 1) * lam**x * np.exp(-lam * t_x) if x > 0 else 0.0
        return float(np.exp(-m.alpha * lam) * (1 - p) ** (m.b - 1) * (active + dropped))

    value, _ = integrate.dblquad(integrand, 0.0, 1.0, 0.0, np.inf, epsabs=0, epsrel=1e-9)
    return value * norm


@pytest.mark.parametrize(
    ("params", "x", "t_x", "T"),
    [
        ((0.25, 4.0, 0.8, 2.5), 0, 0.0, 30.0),  # no repeat purchase: one term only
        ((0.25, 4.0, 0.8, 2.5), 2, 10.0, 30.0),  # both terms, singular priors
        ((1.5, 10.0, 1.3, 0.7), 4, 35.5, 60.0),  # shapes above 1 and b below 1
        ((2.0, 1.0, 3.0, 4.0), 1, 0.5, 2.0),  # short history, steep rate prior
    ],
)
def test_log_likelihood_equals_numerical_integration(params, x, t_x, T):
    m = BGNBD(*params)
    expected = np.log(_likelihood_by_integration(m, x, t_x, T))
    assert m.log_likelihood(x, t_x, T) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_log_likelihood_stays_finite_for_heavy_buyers():
    ll = TRUE.log_likelihood([10_000, 100_000], [3_600.0, 36_000.0], [3_650.0, 36_500.0])
    assert np.isfinite(ll).all()


def test_p_alive_is_one_without_repeat_purchase():
    T = np.array([0.0, 1.0, 365.0, 1e6])
    np.testing.assert_array_equal(TRUE.p_alive(np.zeros(4), np.zeros(4), T), np.ones(4))


def test_p_no_purchase_matches_simulation(population):
    x, t_x, T, future = population
    predicted = TRUE.p_no_purchase(HORIZON, x, t_x, T)
    observed = future == 0
    # Given the true parameters, outcomes are independent Bernoulli(predicted).
    for name, group in [
        ("all", np.ones_like(observed)),
        ("no repeat", x == 0),
        ("1-3 repeats", (x >= 1) & (x <= 3)),
        ("4+ repeats", x >= 4),
        ("lapsed", (x >= 1) & (T - t_x > 120)),
    ]:
        p, o = predicted[group], observed[group]
        z = (o.sum() - p.sum()) / np.sqrt(np.sum(p * (1 - p)))
        assert abs(z) < 3.0, f"{name}: observed {o.mean():.4f}, predicted {p.mean():.4f}"


def test_expected_purchases_matches_simulation(population):
    x, t_x, T, future = population
    predicted = TRUE.expected_purchases(HORIZON, x, t_x, T)
    for name, group in [("all", np.ones_like(x, dtype=bool)), ("4+ repeats", x >= 4)]:
        resid = future[group] - predicted[group]
        z = resid.sum() / np.sqrt(np.sum(resid**2))
        assert abs(z) < 3.0, f"{name}: observed {future[group].mean()}, predicted mean"


@pytest.mark.parametrize(
    "params",
    [
        (0.25, 4.0, 0.8, 2.5),  # the usual case
        (50.0, 2.0, 20.0, 0.1),  # hyp2f1 fails for heavy buyers over long horizons
        (3.0, 0.5, 5.0, 200.0),  # hyp2f1 fails for every customer at long horizons
        (10.0, 1.0, 0.1, 0.05),  # a + b < 1: the closed form breaks down at x == 0
        (0.25, 4.0, 1.0, 2.5),  # a == 1: closed form is 0/0
    ],
)
# The reference quadrature may report round-off near an endpoint singularity; the
# agreement to 1e-6 with an unrelated method is what the test checks.
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("h", [1.0, 90.0, 10_000.0])
def test_expected_purchases_equals_integral_form(params, h):
    m = BGNBD(*params)
    x = np.array([0, 1, 5, 50, 500.0])
    t_x = np.array([0, 10, 100, 300, 360.0])
    T = np.full(5, 365.0)
    got = m.expected_purchases(h, x, t_x, T)

    # E[Y(h) | active] = E_p[(1 - ((alpha+T)/(alpha+T+p h))^(r+x)) / p], p ~ Beta(a, b+x).
    # For a < 1 it is integrated on v = p^a, which removes the density's singularity at 0.
    expected = []
    for xi, Ti in zip(x, T, strict=True):
        q = m.b + xi

        def g(p: float, xi: float = xi, Ti: float = Ti) -> float:
            if p == 0:
                return (m.r + xi) * h / (m.alpha + Ti)
            return float(-np.expm1(-(m.r + xi) * np.log1p(p * h / (m.alpha + Ti))) / p)

        mean = m.a / (m.a + q)
        sd = np.sqrt(mean * (1 - mean) / (m.a + q + 1))
        if m.a < 1:

            def f(v: float, q: float = q) -> float:
                p = v ** (1.0 / m.a)
                return g(p) * float(np.exp((q - 1) * np.log1p(-p) - special.betaln(m.a, q)))

            knots = [min(0.5, (k / q) ** m.a) for k in (1.0, 10.0, 50.0)]
            val, _ = integrate.quad(f, 0.0, 1.0, points=knots, limit=500, epsabs=0.0, epsrel=1e-9)
            expected.append(val / m.a)
        else:

            def f(p: float, q: float = q) -> float:
                if p in (0.0, 1.0):
                    return 0.0
                log_pdf = (m.a - 1) * np.log(p) + (q - 1) * np.log1p(-p) - special.betaln(m.a, q)
                return g(p) * float(np.exp(log_pdf))

            knots = [c for c in (mean - 8 * sd, mean, mean + 8 * sd) if 0 < c < 1]
            val, _ = integrate.quad(f, 0.0, 1.0, points=knots, limit=500, epsabs=0.0, epsrel=1e-9)
            expected.append(val)
    expected_arr = np.array(expected) * m.p_alive(x, t_x, T)
    np.testing.assert_allclose(got, expected_arr, rtol=1e-6)


def test_horizon_zero_predicts_nothing():
    x, t_x, T = [0, 3], [0.0, 20.0], [50.0, 50.0]
    np.testing.assert_array_equal(TRUE.expected_purchases(0.0, x, t_x, T), [0.0, 0.0])
    np.testing.assert_array_equal(TRUE.p_no_purchase(0.0, x, t_x, T), [1.0, 1.0])


histories = st.tuples(
    st.integers(1, 300),  # x
    st.floats(0.0, 1.0),  # fraction of T at which the earlier last purchase happened
    st.floats(0.0, 1.0),  # and the later one
    st.floats(1.0, 2_000.0),  # T
)
params = st.tuples(
    st.floats(0.01, 20.0), st.floats(0.01, 500.0), st.floats(0.01, 20.0), st.floats(0.01, 20.0)
)


@settings(max_examples=200, deadline=None)
@given(params=params, history=histories, h=st.floats(0.0, 1_000.0))
def test_more_recent_last_purchase_never_lowers_p_alive(params, history, h):
    x, f1, f2, T = history
    early, late = sorted((f1, f2))
    t_x = np.maximum(np.array([early, late]) * T, 1e-9)
    m = BGNBD(*params)
    alive = m.p_alive(x, t_x, T)
    silent = m.p_no_purchase(h, x, t_x, T)
    assert alive[1] >= alive[0] - 1e-12
    assert silent[1] <= silent[0] + 1e-12
    # and probabilities stay probabilities
    assert ((alive >= 0) & (alive <= 1) & (silent >= 0) & (silent <= 1)).all()


@settings(max_examples=100, deadline=None)
@given(params=params, history=histories, h1=st.floats(0.0, 500.0), h2=st.floats(0.0, 500.0))
def test_longer_horizon_means_more_purchases_and_less_silence(params, history, h1, h2):
    x, f, _, T = history
    t_x = max(f * T, 1e-9)
    short, long = sorted((h1, h2))
    m = BGNBD(*params)
    assert m.p_no_purchase(long, x, t_x, T) <= m.p_no_purchase(short, x, t_x, T) + 1e-12
    e_short = m.expected_purchases(short, x, t_x, T)
    e_long = m.expected_purchases(long, x, t_x, T)
    assert e_long >= e_short * (1 - 1e-9) - 1e-12
    assert np.isfinite(e_long)


def test_parameters_round_trip_through_json():
    m = BGNBD(r=np.float64(0.3), alpha=5.0, a=0.9, b=2.0)
    data = json.loads(json.dumps(m.to_dict()))
    assert all(type(v) is float for v in m.to_dict().values())
    assert BGNBD.from_dict(data) == m


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [
        ([1.0, np.nan], [2.0, np.nan], [5.0, np.nan], "never purchased"),  # NaN history
        ([], [], [], "zero customers"),  # empty input
        ([-1.0], [0.0], [5.0], "whole numbers"),  # negative frequency
        ([1.5], [2.0], [5.0], "whole numbers"),  # fractional frequency
        ([1.0], [6.0], [5.0], "0 <= recency <= age"),  # last purchase after as_of
        ([1.0], [-1.0], [5.0], "0 <= recency <= age"),  # negative recency
        ([0.0], [2.0], [5.0], "recency must be 0"),  # recency without repeat purchase
        ([2.0], [0.0], [5.0], "frequency > 0"),  # repeat purchases at time 0
        ([1.0], [2.0], [np.inf], "finite"),  # infinite age
    ],
)
def test_fit_refuses_impossible_input(x, t_x, T, message):
    with pytest.raises(ValueError, match=message):
        fit_bgnbd(x, t_x, T)


def test_predictions_refuse_nan_and_bad_parameters():
    with pytest.raises(ValueError, match="never purchased"):
        TRUE.p_alive([np.nan], [np.nan], [np.nan])
    with pytest.raises(ValueError, match="horizon"):
        TRUE.p_no_purchase(-1.0, [1], [2.0], [5.0])
    with pytest.raises(ValueError, match="alpha"):
        BGNBD(r=1.0, alpha=0.0, a=1.0, b=1.0)
    with pytest.raises(ValueError, match="weights"):
        fit_bgnbd([1, 2], [1.0, 2.0], [3.0, 3.0], weights=[1.0, -1.0])


def test_training_reexports_the_models_of_features():
    assert BGNBD is models.BGNBD and GammaGamma is models.GammaGamma


GG_TRUE = GammaGamma(p=6.25, q=3.74, v=15.44)


def simulate_spend(
    model: GammaGamma, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw repeat buyers from the Gamma-Gamma process: ``x``, mean spend ``m_x``, ``nu``.

    ``x`` is 1 + Poisson(3), independent of ``nu``; each of the ``x`` spends is drawn
    on its own and averaged, so the test does not rely on the sum being Gamma.
    """
    rng = np.random.default_rng(seed)
    x = 1 + rng.poisson(3.0, n)
    nu = rng.gamma(model.q, 1.0 / model.v, n)
    spends = rng.gamma(model.p, 1.0 / np.repeat(nu, x))
    sums = np.add.reduceat(spends, np.concatenate([[0], np.cumsum(x)[:-1]]))
    return x.astype(float), sums / x, nu


def _gg_theta(model: GammaGamma) -> np.ndarray:
    return np.log([model.p, model.q - 1.0, model.v])


def test_gamma_gamma_fit_recovers_parameters_within_sampling_error():
    x, m, _ = simulate_spend(GG_TRUE, 5_000, seed=21)
    fitted = fit_gamma_gamma(x, m)
    est, truth = _gg_theta(fitted), _gg_theta(GG_TRUE)
    # Observed information on the fit's parameters (log p, log(q - 1), log v), by central
    # differences of the analytic gradient of the mean NLL, hence the factor n.
    step = 1e-4
    hess = np.empty((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = step
        g_plus = _gg_nll_and_grad(est + e, x, m, 0.0)[1]
        g_minus = _gg_nll_and_grad(est - e, x, m, 0.0)[1]
        hess[:, j] = (g_plus - g_minus) / (2 * step) * x.size
    hess = 0.5 * (hess + hess.T)
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    assert (se < 0.3).all(), f"the sample is too small to test anything: se={se}"
    z = (est - truth) / se
    assert np.abs(z).max() < 4.0, f"estimates {fitted} vs truth {GG_TRUE}, z={z}"


def test_gamma_gamma_fit_follows_the_currency_unit_and_ignores_non_repeat_buyers():
    x, m, _ = simulate_spend(GG_TRUE, 2_000, seed=22)
    base = fit_gamma_gamma(x, m)
    # customers without a repeat purchase carry no spend information (and may be NaN)
    padded = fit_gamma_gamma(
        np.concatenate([x, np.zeros(500)]), np.concatenate([m, [np.nan] * 500])
    )
    np.testing.assert_allclose(_gg_theta(padded), _gg_theta(base), rtol=1e-6)
    cents = fit_gamma_gamma(x, 100.0 * m)
    np.testing.assert_allclose([cents.p, cents.q], [base.p, base.q], rtol=1e-3)
    assert cents.v == pytest.approx(100.0 * base.v, rel=1e-3)


def test_gamma_gamma_fitted_predictions_are_unbiased_for_the_true_mean_spend():
    x, m, nu = simulate_spend(GG_TRUE, 20_000, seed=23)
    fitted = fit_gamma_gamma(x, m)
    predicted = fitted.conditional_expected_spend(x, m)
    truth = GG_TRUE.p / nu  # each customer's true mean spend per purchase
    for name, group in [("all", x > 0), ("one purchase", x == 1), ("5+", x >= 5)]:
        resid = truth[group] - predicted[group]
        z = resid.mean() / (resid.std() / np.sqrt(resid.size))
        assert abs(z) < 4.0, f"{name}: bias {resid.mean():.3f}"


def test_gamma_gamma_gradient_matches_finite_differences():
    x, m, _ = simulate_spend(GG_TRUE, 2_000, seed=24)
    for point in ([6.25, 2.74, 15.44], [0.5, 0.1, 2.0], [40.0, 20.0, 300.0]):
        theta = np.log(point)
        grad = _gg_nll_and_grad(theta, x, m, 1e-3)[1]
        num = optimize.approx_fprime(theta, lambda t: _gg_nll_and_grad(t, x, m, 1e-3)[0], 1e-7)
        np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("x", "m", "message"),
    [
        ([1.0] * 19 + [0.0] * 50, [10.0] * 19 + [np.nan] * 50, "at least 20 customers"),
        ([1.0] * 30, [10.0] * 29 + [0.0], "mean_spend must be finite and > 0"),
        ([1.0] * 30, [10.0] * 29 + [np.inf], "mean_spend must be finite and > 0"),
        ([1.0] * 29 + [-1.0], [10.0] * 30, "whole numbers"),
    ],
)
def test_gamma_gamma_fit_refuses_bad_input_with_one_line(x, m, message):
    with pytest.raises(ValueError, match=message) as info:
        fit_gamma_gamma(x, m)
    assert "\n" not in str(info.value)


def test_spend_frequency_correlation():
    x, m, _ = simulate_spend(GG_TRUE, 5_000, seed=25)
    x_all, m_all = np.concatenate([x, np.zeros(100)]), np.concatenate([m, np.full(100, np.nan)])
    independent = spend_frequency_correlation(x_all, m_all)
    assert independent == pytest.approx(np.corrcoef(x, m)[0, 1])
    assert abs(independent) < 4.0 / np.sqrt(x.size)
    # heavy buyers spending more per purchase: the model's assumption fails
    assert spend_frequency_correlation(x, m * x) > 0.3
    assert np.isnan(spend_frequency_correlation([1, 2], [3.0, 4.0]))
