"""Fitting the buy-till-you-die models of ``features.btyd`` by maximum likelihood.

``fit_bgnbd`` fits BG/NBD (Fader, Hardie & Lee 2005) and ``fit_gamma_gamma`` the
Gamma-Gamma spend model (Fader & Hardie 2013); the fitted models themselves
(:class:`BGNBD`, :class:`GammaGamma`, re-exported here) live in ``features.btyd`` so
that scoring and serving can use them without importing ``training``.

BG/NBD serves as the classical churn baseline (docs/models.md): ``p_no_purchase``
over the churn horizon is directly comparable with the churn head's probability.
"""

from __future__ import annotations

import numpy as np
from customer_lifecycle.features.btyd import (
    BGNBD,
    GammaGamma,
    _check_history,
    _check_spend_history,
    _log_likelihood_terms,
)
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

__all__ = ["BGNBD", "GammaGamma", "fit_bgnbd", "fit_gamma_gamma", "spend_frequency_correlation"]

FloatArray = NDArray[np.float64]

#: Fewest repeat buyers (frequency >= 1) ``fit_gamma_gamma`` accepts.
MIN_GAMMA_GAMMA_CUSTOMERS = 20


def _nll_and_grad(
    log_params: FloatArray,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    weights: FloatArray,
    penalizer: float,
) -> tuple[float, FloatArray]:
    """Weighted mean negative log-likelihood (plus L2 on log-parameters) and its gradient.

    The gradient is with respect to ``log(r), log(alpha), log(a), log(b)``.
    """
    r, alpha, a, b = np.exp(log_params)
    common, t1, t2, rep = _log_likelihood_terms(r, alpha, a, b, x, t_x, T)
    lse = np.logaddexp(t1, t2)
    ll = common + lse
    w1 = np.exp(t1 - lse)  # posterior probability of "still active at T"
    w2 = np.exp(t2 - lse)  # and of "dropped out after the last purchase"

    psi = special.digamma
    log_at = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    d_r = psi(r + x) - psi(r) + np.log(alpha) - w1 * log_at - w2 * log_atx
    d_alpha = r / alpha - (r + x) * (w1 / (alpha + T) + w2 / (alpha + t_x))
    psi_ab, psi_abx = psi(a + b), psi(a + b + x)
    d_a_t1 = psi_ab - psi_abx
    d_b_t1 = psi(b + x) - psi_abx - psi(b) + psi_ab
    xs = np.where(rep, x, 1.0)
    d_a_t2 = psi(a + 1.0) - psi(a) + psi_ab - psi_abx
    d_b_t2 = np.where(rep, psi(b + xs - 1.0), 0.0) - psi_abx - psi(b) + psi_ab
    d_a = w1 * d_a_t1 + w2 * d_a_t2
    d_b = w1 * d_b_t1 + w2 * d_b_t2

    total = weights.sum()
    value = -float(np.dot(weights, ll)) / total + penalizer * float(np.sum(log_params**2))
    grads = np.array([np.dot(weights, g) for g in (d_r, d_alpha, d_a, d_b)])
    grad = -grads * np.array([r, alpha, a, b]) / total + 2.0 * penalizer * log_params
    return value, grad


def fit_bgnbd(
    frequency: ArrayLike,
    recency: ArrayLike,
    age: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    penalizer: float = 1e-6,
    max_iter: int = 1000,
) -> BGNBD:
    """Fit BG/NBD by maximum likelihood.

    Minimises the weighted mean negative log-likelihood over ``log(r, alpha, a, b)``
    with L-BFGS-B and an analytic gradient.

    Parameters
    ----------
    frequency, recency, age : array_like
        Repeat purchases ``x``, recency ``t_x`` and age ``T`` in days, one entry per
        customer (or per group of identical customers, see ``weights``). Customers who
        never purchased (NaN recency/age) must be excluded beforehand.
    weights : array_like, optional
        Non-negative weight per row (e.g. how many customers share that history).
    penalizer : float, default 1e-6
        L2 penalty ``penalizer * sum(log(params)**2)`` added to the mean negative
        log-likelihood. Unlike lifetimes (which penalises the parameters themselves)
        it acts on log-parameters, so it does not depend on the time unit much; the
        tiny default only keeps the optimiser from drifting to infinity when the data
        cannot identify a parameter (e.g. nobody ever drops out).
    max_iter : int, default 1000
        Iteration cap of the optimiser.

    Returns
    -------
    BGNBD
        The fitted parameters.

    Raises
    ------
    ValueError
        On empty input, NaN, impossible histories, bad weights, or when the optimiser
        fails to produce finite parameters.
    """
    x, t_x, T = (np.ravel(v) for v in _check_history(frequency, recency, age))
    if x.size == 0:
        raise ValueError("cannot fit BG/NBD on zero customers")
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.ravel(np.asarray(weights, dtype=np.float64))
        if w.shape != x.shape:
            raise ValueError(f"weights has {w.size} entries, the histories {x.size}")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, >= 0 and not all zero")
    if not (np.isfinite(penalizer) and penalizer >= 0):
        raise ValueError("penalizer must be a finite number >= 0")

    # Starting values: r = 1 and alpha matching the mean purchase rate while active;
    # a = 1, b = 3 (mean dropout probability 1/4).
    rate = max(float(np.dot(w, x)) / max(float(np.dot(w, T)), 1e-9), 1e-6)
    starts = [np.log([1.0, 1.0 / rate, 1.0, 3.0]), np.zeros(4)]
    best: optimize.OptimizeResult | None = None
    for x0 in starts:
        res = optimize.minimize(
            _nll_and_grad,
            x0,
            args=(x, t_x, T, w, penalizer),
            jac=True,
            method="L-BFGS-B",
            # exp(+-30) days keeps every parameter finite and positive
            bounds=[(-30.0, 30.0)] * 4,
            options={"maxiter": max_iter},
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
        if best is not None and best.success:
            break
    if best is None or not np.isfinite(best.x).all():
        raise ValueError("BG/NBD fit failed: the likelihood was not finite at any start")
    r, alpha, a, b = (float(v) for v in np.exp(best.x))
    return BGNBD(r=r, alpha=alpha, a=a, b=b)


def _gg_nll_and_grad(
    theta: FloatArray, x: FloatArray, m: FloatArray, penalizer: float
) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood of Gamma-Gamma (plus L2 on ``theta``) and its gradient.

    ``theta = (log p, log(q - 1), log v)``; writing ``q - 1`` keeps every fit inside
    the model's valid region ``q > 1``. The density of a mean ``m`` of ``x`` spends is

    ``Gamma(p x + q) / (Gamma(p x) Gamma(q)) * v^q * m^(p x - 1) * x^(p x)
    / (v + x m)^(p x + q)``.
    """
    p, q_minus_1, v = np.exp(theta)
    q = 1.0 + q_minus_1
    px = p * x
    log_vxm = np.log(v + x * m)
    ll = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(v)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * log_vxm
    )
    psi_pxq = special.digamma(px + q)
    d_p = x * (psi_pxq - special.digamma(px) + np.log(m) + np.log(x) - log_vxm)
    d_q = psi_pxq - special.digamma(q) + np.log(v) - log_vxm
    d_v = q / v - (px + q) / (v + x * m)
    n = x.size
    value = -float(ll.sum()) / n + penalizer * float(np.sum(theta**2))
    scale = np.array([p, q_minus_1, v])
    grad = -np.array([d_p.sum(), d_q.sum(), d_v.sum()]) * scale / n + 2.0 * penalizer * theta
    return value, grad


def fit_gamma_gamma(
    frequency: ArrayLike,
    mean_spend: ArrayLike,
    *,
    penalizer: float = 1e-6,
    max_iter: int = 1000,
) -> GammaGamma:
    """Fit the Gamma-Gamma spend model by maximum likelihood.

    Only customers with ``frequency >= 1`` carry information about spend and are used;
    the others (and their ``mean_spend``, which may be NaN) are ignored. The fit
    minimises the mean negative log-likelihood over ``(log p, log(q - 1), log v)`` with
    L-BFGS-B and an analytic gradient, on spends divided by their median so that the
    currency unit does not matter. A fitted ``q`` close to 1 means spend is too
    heavy-tailed for the model.

    The model assumes spend per purchase is independent of purchase frequency; check
    with :func:`spend_frequency_correlation`.

    Parameters
    ----------
    frequency : array_like
        Number of purchases ``x`` behind each ``mean_spend`` (the BG/NBD repeat
        purchases).
    mean_spend : array_like
        Mean spend of those purchases, finite and > 0 where ``frequency >= 1``.
    penalizer : float, default 1e-6
        L2 penalty on the three log-parameters added to the mean negative
        log-likelihood; the tiny default only keeps the optimiser finite when the data
        cannot identify a parameter (e.g. every customer spends the same).
    max_iter : int, default 1000
        Iteration cap of the optimiser.

    Returns
    -------
    GammaGamma
        The fitted parameters, ``v`` in the unit of ``mean_spend``.

    Raises
    ------
    ValueError
        On impossible input, fewer than ``MIN_GAMMA_GAMMA_CUSTOMERS`` repeat buyers, or
        a failed fit.
    """
    x_all, m_all, repeat = _check_spend_history(frequency, mean_spend)
    x, m = np.ravel(x_all[repeat]), np.ravel(m_all[repeat])
    if x.size < MIN_GAMMA_GAMMA_CUSTOMERS:
        raise ValueError(
            f"Gamma-Gamma needs at least {MIN_GAMMA_GAMMA_CUSTOMERS} customers with a repeat "
            f"purchase, got {x.size}"
        )
    if not (np.isfinite(penalizer) and penalizer >= 0):
        raise ValueError("penalizer must be a finite number >= 0")
    unit = float(np.median(m))
    m = m / unit
    # Starts: p = 1 with q = 2, and p = 5 with q = 4; v matches the mean spend per
    # purchase p v / (q - 1) to the observed mean of customer means.
    mean = float(np.mean(m))
    starts = [np.log([1.0, 1.0, mean]), np.log([5.0, 3.0, 0.6 * mean])]
    best: optimize.OptimizeResult | None = None
    for x0 in starts:
        res = optimize.minimize(
            _gg_nll_and_grad,
            x0,
            args=(x, m, penalizer),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-30.0, 30.0)] * 3,
            options={"maxiter": max_iter},
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None or not np.isfinite(best.x).all():
        raise ValueError("Gamma-Gamma fit failed: the likelihood was not finite at any start")
    p, q_minus_1, v = (float(val) for val in np.exp(best.x))
    return GammaGamma(p=p, q=1.0 + q_minus_1, v=v * unit)


def spend_frequency_correlation(frequency: ArrayLike, mean_spend: ArrayLike) -> float:
    """Pearson correlation of frequency and mean spend among repeat buyers.

    Gamma-Gamma assumes spend per purchase is independent of purchase frequency; a
    correlation far from 0 (say beyond +-0.3) means its spend predictions are biased
    for heavy or light buyers. Customers with ``frequency == 0`` are left out.

    Returns
    -------
    float
        The correlation, NaN with fewer than 3 repeat buyers or no variation.
    """
    x_all, m_all, repeat = _check_spend_history(frequency, mean_spend)
    x, m = x_all[repeat], m_all[repeat]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(np.corrcoef(x, m)[0, 1])
