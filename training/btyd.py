"""BG/NBD buy-till-you-die model (Fader, Hardie & Lee 2005), written with scipy.

The model, for one customer observed from the first purchase (time 0) to age ``T``:

* while active, repeat purchases arrive as a Poisson process with rate ``lambda``;
  ``lambda ~ Gamma(shape=r, rate=alpha)`` across customers;
* right after each repeat purchase the customer drops out for good with probability
  ``p``; ``p ~ Beta(a, b)`` across customers. A customer is therefore always active
  at time 0 and can only leave right after a purchase.

A customer's history is summarised by ``frequency`` ``x`` (number of repeat
purchases), ``recency`` ``t_x`` (time of the last repeat purchase, 0 when ``x == 0``)
and ``age`` ``T``; all times are in days here. Customers who never purchased have
no such history (the feature engine reports NaN recency and age for them) and must
be left out by the caller.

This module serves as the classical churn baseline (docs/models.md): ``p_no_purchase``
over the churn horizon is directly comparable with the churn head's probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, optimize, special

__all__ = ["BGNBD", "fit_bgnbd"]

FloatArray = NDArray[np.float64]

# Below this distance of ``a`` from 1 the closed form of E[Y(h)] is 0/0; the value is
# smooth in ``a``, so it is interpolated from both sides instead.
_A_NEAR_ONE = 1e-4


def _check_history(
    frequency: ArrayLike, recency: ArrayLike, age: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Broadcast ``(x, t_x, T)`` to float arrays and refuse impossible histories."""
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, age))
    try:
        x, t_x, T = np.broadcast_arrays(x, t_x, T)
    except ValueError as exc:
        raise ValueError(
            f"frequency, recency and age have incompatible shapes {x.shape}, {t_x.shape}, {T.shape}"
        ) from exc
    if np.isnan(x).any() or np.isnan(t_x).any() or np.isnan(T).any():
        raise ValueError(
            "frequency, recency or age contain NaN: customers who never purchased have no "
            "BG/NBD history; exclude them before calling the BG/NBD model"
        )
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(T).all()):
        raise ValueError("frequency, recency and age must be finite")
    if (x < 0).any() or (x != np.round(x)).any():
        raise ValueError("frequency (repeat purchases) must be whole numbers >= 0")
    if (t_x < 0).any() or (t_x > T).any():
        raise ValueError("recency and age must satisfy 0 <= recency <= age")
    if ((x == 0) & (t_x != 0)).any():
        raise ValueError("recency must be 0 when frequency is 0 (no repeat purchase)")
    if ((x > 0) & (t_x == 0)).any():
        raise ValueError(
            "recency is 0 although frequency > 0: a repeat purchase must come after the first"
        )
    return x, t_x, T


def _check_horizon(h: ArrayLike) -> FloatArray:
    horizon = np.asarray(h, dtype=np.float64)
    if not np.isfinite(horizon).all() or (horizon < 0).any():
        raise ValueError("the horizon h must be finite and >= 0 days")
    return horizon


def _log_likelihood_terms(
    r: float, alpha: float, a: float, b: float, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, NDArray[np.bool_]]:
    """Per-customer pieces of the log-likelihood.

    ``LL = common + logaddexp(t1, t2)`` with ``t2 = -inf`` where ``x == 0``:

    * ``common = log Gamma(r + x) - log Gamma(r) + r log alpha``
    * ``t1 = log B(a, b + x) - log B(a, b) - (r + x) log(alpha + T)``
      (still active at ``T``)
    * ``t2 = log B(a + 1, b + x - 1) - log B(a, b) - (r + x) log(alpha + t_x)``
      (dropped out right after the last purchase, only possible when ``x > 0``)
    """
    rep = x > 0
    common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    log_b_ab = special.betaln(a, b)
    t1 = special.betaln(a, b + x) - log_b_ab - (r + x) * np.log(alpha + T)
    # b + x - 1 > 0 only where x >= 1, so the second term is evaluated there only.
    xs = np.where(rep, x, 1.0)
    t2 = special.betaln(a + 1.0, b + xs - 1.0) - log_b_ab - (r + xs) * np.log(alpha + t_x)
    t2 = np.where(rep, t2, -np.inf)
    return common, t1, t2, rep


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


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters and the model's predictions.

    Parameters
    ----------
    r, alpha : float
        Shape and rate of the Gamma distribution of purchase rates (per day).
    a, b : float
        Parameters of the Beta distribution of the dropout probability.

    Notes
    -----
    Every method takes ``frequency`` (repeat purchases ``x``), ``recency`` (``t_x``,
    days from the first to the last purchase) and ``age`` (``T``, days from the first
    purchase to the scoring time), broadcast against each other, and raises
    ``ValueError`` on NaN (customers who never purchased) or impossible histories.
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"BG/NBD parameter {name} must be a finite number > 0, got {value}"
                )

    def to_dict(self) -> dict[str, float]:
        """The parameters as plain floats (JSON-serialisable)."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BGNBD:
        """Rebuild from :meth:`to_dict` output; extra keys are refused."""
        keys = {"r", "alpha", "a", "b"}
        if set(data) != keys:
            raise ValueError(f"BG/NBD parameters need exactly the keys {sorted(keys)}")
        return cls(**{k: float(data[k]) for k in keys})

    def log_likelihood(
        self, frequency: ArrayLike, recency: ArrayLike, age: ArrayLike
    ) -> FloatArray:
        """Log-likelihood of each customer's history.

        ``L = B(a, b+x)/B(a, b) * Gamma(r+x) alpha^r / (Gamma(r) (alpha+T)^(r+x))
        + [x > 0] B(a+1, b+x-1)/B(a, b) * Gamma(r+x) alpha^r / (Gamma(r) (alpha+t_x)^(r+x))``,
        evaluated with ``gammaln``/``betaln`` and a log-sum-exp, so it stays finite for
        large ``x`` and ``T``.

        Returns
        -------
        numpy.ndarray
            One log-likelihood per customer (broadcast shape of the inputs).
        """
        x, t_x, T = _check_history(frequency, recency, age)
        common, t1, t2, _ = _log_likelihood_terms(self.r, self.alpha, self.a, self.b, x, t_x, T)
        return np.asarray(common + np.logaddexp(t1, t2), dtype=np.float64)

    def _log_odds_dropped(self, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
        """``log P(dropped | history) - log P(active | history)``; ``-inf`` where ``x == 0``."""
        xs = np.where(x > 0, x, 1.0)
        lo = (
            np.log(self.a)
            - np.log(self.b + xs - 1.0)
            + (self.r + xs) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )
        return np.where(x > 0, lo, -np.inf)

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, age: ArrayLike) -> FloatArray:
        """Probability that the customer is still active at age ``T``.

        ``P(alive) = 1 / (1 + [x > 0] a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x))``; it is 1
        for ``x == 0`` because dropout only happens right after a repeat purchase.
        """
        x, t_x, T = _check_history(frequency, recency, age)
        return np.asarray(special.expit(-self._log_odds_dropped(x, t_x, T)), dtype=np.float64)

    def p_no_purchase(
        self, h: ArrayLike, frequency: ArrayLike, recency: ArrayLike, age: ArrayLike
    ) -> FloatArray:
        """Probability of no purchase in ``(T, T + h]``.

        A customer who has dropped out makes no purchase. An active customer stays
        active until their next purchase (dropout happens only right after one), so
        "no purchase in ``(T, T+h]``" means exactly "no Poisson event in ``h`` days".
        Given the history and being active, ``lambda`` is ``Gamma(r + x, alpha + T)``
        (the prior times ``lambda^x exp(-lambda T)``), so that probability is
        ``E[exp(-lambda h)] = ((alpha + T) / (alpha + T + h))^(r + x)``. Hence

        ``P = (1 - p_alive) + p_alive * ((alpha + T) / (alpha + T + h)) ** (r + x)``.

        Parameters
        ----------
        h : array_like
            Horizon in days (>= 0), broadcast against the histories.

        Returns
        -------
        numpy.ndarray
            Probabilities in ``[0, 1]``.
        """
        horizon = _check_horizon(h)
        x, t_x, T = _check_history(frequency, recency, age)
        alive = special.expit(-self._log_odds_dropped(x, t_x, T))
        log_silent = (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon))
        # 1 - alive * (1 - silent), with expm1 so a tiny h keeps its precision
        p = 1.0 + alive * np.expm1(log_silent)
        return np.asarray(np.clip(p, 0.0, 1.0), dtype=np.float64)

    def expected_purchases(
        self, h: ArrayLike, frequency: ArrayLike, recency: ArrayLike, age: ArrayLike
    ) -> FloatArray:
        """Expected number of purchases in ``(T, T + h]`` given the history.

        ``E[Y(h) | x, t_x, T] = p_alive * E[Y(h) | active]`` with, after Euler's
        transformation of the published form (better conditioned for large ``x``),

        ``E[Y(h) | active] = (a+b+x-1)/(a-1)
        * (1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z))``, ``z = h / (alpha+T+h)``.

        ``hyp2f1`` can fail (non-finite values, lost precision); any value that is not
        finite or falls outside the exact bounds ``0 <= E[Y(h) | active] <=
        h (r+x)/(alpha+T)`` is recomputed by quadrature of its integral form
        ``E_p[(1 - ((alpha+T)/(alpha+T+p h))^(r+x)) / p]``, ``p ~ Beta(a, b+x)``.
        """
        horizon = _check_horizon(h)
        x, t_x, T = _check_history(frequency, recency, age)
        horizon, x, t_x, T = np.broadcast_arrays(horizon, x, t_x, T)
        shape = x.shape
        horizon, x, t_x, T = (np.ravel(v) for v in (horizon, x, t_x, T))
        alive = special.expit(-self._log_odds_dropped(x, t_x, T))

        if abs(self.a - 1.0) < _A_NEAR_ONE:
            lo = self._expected_active(self.a - 2 * _A_NEAR_ONE, horizon, x, T)
            hi = self._expected_active(self.a + 2 * _A_NEAR_ONE, horizon, x, T)
            active = 0.5 * (lo + hi)
        else:
            active = self._expected_active(self.a, horizon, x, T)
        bound = horizon * (self.r + x) / (self.alpha + T)
        bad = ~np.isfinite(active) | (active < 0) | (active > bound * (1 + 1e-8) + 1e-12)
        for i in np.flatnonzero(bad):
            active[i] = self._expected_active_quad(float(horizon[i]), float(x[i]), float(T[i]))
        active = np.clip(np.nan_to_num(active, nan=0.0, posinf=0.0), 0.0, bound)
        return np.asarray(alive * active, dtype=np.float64).reshape(shape)

    def _expected_active(self, a: float, h: FloatArray, x: FloatArray, T: FloatArray) -> FloatArray:
        """Closed form of ``E[Y(h) | active]`` for a given ``a`` (NaN where it fails)."""
        c = a + self.b + x - 1.0
        z = h / (self.alpha + T + h)
        with np.errstate(all="ignore"):
            hyp = special.hyp2f1(a + self.b - 1.0 - self.r, a - 1.0, c, z)
            # 1 - (1-z)^(a-1) hyp; expm1 keeps precision when h is small
            log_term = (a - 1.0) * np.log1p(-z) + np.log(np.where(hyp > 0, hyp, np.nan))
            out = c / (a - 1.0) * -np.expm1(log_term)
        return np.asarray(np.where(h == 0, 0.0, out), dtype=np.float64)

    def _expected_active_quad(self, h: float, x: float, T: float) -> float:
        """``E[Y(h) | active]`` by quadrature over ``p ~ Beta(a, b + x)``."""
        if h == 0:
            return 0.0
        shape, scale = self.r + x, h / (self.alpha + T)

        def integrand(p: float) -> float:
            if p <= 0:
                return shape * scale
            return float(-np.expm1(-shape * np.log1p(p * scale)) / p)

        a, q = self.a, self.b + x
        log_beta = special.betaln(a, q)
        # Breakpoints around the bulk of Beta(a, q) so the adaptive rule finds it even
        # when it is a narrow spike near 0 (large q).
        mean = a / (a + q)
        sd = np.sqrt(mean * (1.0 - mean) / (a + q + 1.0))
        knots = {mean, mean - 8 * sd, mean + 8 * sd, 1.0 / q, 10.0 / q, 50.0 / q}
        knots_p = sorted(k for k in knots if 0.0 < k < 1.0)
        # full_output=1 hands back scipy's round-off notices instead of warning; the
        # caller clips the value to its exact bounds.
        if a < 1.0:
            # p = v^(1/a) turns p^(a-1) dp into dv / a and removes the singularity at 0.
            def on_v(v: float) -> float:
                p = v ** (1.0 / a)
                if p >= 1.0:
                    return 0.0
                return integrand(p) * float(np.exp((q - 1.0) * np.log1p(-p) - log_beta)) / a

            points = [k**a for k in knots_p]
            return float(
                integrate.quad(
                    on_v,
                    0.0,
                    1.0,
                    points=points,
                    limit=500,
                    epsabs=0.0,
                    epsrel=1e-10,
                    full_output=1,
                )[0]
            )

        def on_p(p: float) -> float:
            if p <= 0.0 or p >= 1.0:
                return 0.0
            log_pdf = (a - 1.0) * np.log(p) + (q - 1.0) * np.log1p(-p) - log_beta
            return integrand(p) * float(np.exp(log_pdf))

        return float(
            integrate.quad(
                on_p, 0.0, 1.0, points=knots_p, limit=500, epsabs=0.0, epsrel=1e-10, full_output=1
            )[0]
        )


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
