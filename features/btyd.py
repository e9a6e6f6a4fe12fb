"""Buy-till-you-die value models: BG/NBD purchase counts and Gamma-Gamma spend.

These are fitted, frozen transforms (the fitting lives in ``training.btyd``) that
scoring, serving and features can use without importing ``training``.

BG/NBD (Fader, Hardie & Lee 2005), for one customer observed from the first purchase
(time 0) to age ``T``:

* while active, repeat purchases arrive as a Poisson process with rate ``lambda``;
  ``lambda ~ Gamma(shape=r, rate=alpha)`` across customers;
* right after each repeat purchase the customer drops out for good with probability
  ``p``; ``p ~ Beta(a, b)`` across customers. A customer is therefore always active
  at time 0 and can only leave right after a purchase.

A customer's history is summarised by ``frequency`` ``x`` (number of repeat
purchases), ``recency`` ``t_x`` (time of the last repeat purchase, 0 when ``x == 0``)
and ``age`` ``T``; all times are in days here. Customers who never purchased have
no such history (the feature engine reports NaN recency and age for them): the
:class:`BGNBD` methods refuse them, :func:`predict_value` returns NaN for them.

Gamma-Gamma (Fader & Hardie 2013, "The Gamma-Gamma model of monetary value"): the
spends of a customer's purchases are ``Gamma(shape=p, rate=nu)`` with
``nu ~ Gamma(shape=q, rate=v)`` across customers, so a customer's mean spend per
purchase is ``p / nu``. It assumes that spend per purchase is independent of how
often the customer buys; ``training.btyd.spend_frequency_correlation`` measures how
far the data are from that.

The value tiers (:func:`tier_thresholds`, :func:`value_tier`) rank customers by
predicted spend against thresholds fixed on a reference (training) population, so
chunked scoring gives every customer the same tier as scoring everyone at once.

:class:`ValueModel` is what a model bundle stores of all this: the two fitted models,
the horizon, the tier thresholds, the measured fill for customers who have not bought
yet, and which learned heads (LightGBM boosters kept beside it) replace the baselines.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, special

__all__ = [
    "BGNBD",
    "VALUE_TIER_SHARES",
    "GammaGamma",
    "TierThresholds",
    "VALUE_HEADS",
    "ValueModel",
    "expected_spend",
    "predict_value",
    "tier_thresholds",
    "value_tier",
]

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


def _read_params(data: object, keys: Sequence[str], model: str) -> dict[str, float]:
    """Plain floats from a parameter mapping read from an artifact (possibly hostile).

    Exactly ``keys`` must be present and every value must be a real number (not a
    bool or a string); range checks are left to the model's constructor.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{model} parameters must be a mapping, got {type(data).__name__}")
    if set(data) != set(keys):
        raise ValueError(f"{model} parameters need exactly the keys {sorted(keys)}")
    out: dict[str, float] = {}
    for key in keys:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"{model} parameter {key} must be a number, got {type(value).__name__}"
            )
        out[key] = float(value)
    return out


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
        """Rebuild from :meth:`to_dict` output; refuses missing or extra keys and non-numbers."""
        return cls(**_read_params(data, ("r", "alpha", "a", "b"), "BG/NBD"))

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

    def median_days_to_next_purchase(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        age: ArrayLike,
        *,
        max_days: float = 3 * 365.0,
    ) -> FloatArray:
        """Median waiting time, in days after ``T``, until the customer's next purchase.

        It is the ``t*`` with ``P(no purchase in (T, T + t*]) = 1/2`` (see
        :meth:`p_no_purchase`): the expected next-order date is ``as_of + t*`` days, the
        date by which the customer has bought again with probability one half.
        Writing ``pa`` for :meth:`p_alive`, ``1 - pa + pa * s = 1/2`` gives the
        survival ``s = 1 - 1 / (2 pa)`` of an active customer, and
        ``((alpha + T) / (alpha + T + t*))^(r + x) = s`` inverts to

        ``t* = (alpha + T) * (s^(-1 / (r + x)) - 1)``.

        NaN means "not expected to buy again" in one of two senses: ``pa <= 1/2`` (the
        chance of never buying again, ``1 - pa``, is at least one half, so there is no
        such ``t*``), or ``t* > max_days``.

        Parameters
        ----------
        frequency, recency, age : array_like
            The history (see :class:`BGNBD`).
        max_days : float, default 1095
            Longest waiting time reported (three times the default 365-day horizon);
            beyond it the date is too uncertain to act on.

        Returns
        -------
        numpy.ndarray
            Days after ``T`` (>= 0), NaN where not expected to buy again.
        """
        if not (np.isfinite(max_days) and max_days >= 0):
            raise ValueError("max_days must be a finite number >= 0")
        x, t_x, T = _check_history(frequency, recency, age)
        alive = special.expit(-self._log_odds_dropped(x, t_x, T))
        return self._median_days(alive, x, T, max_days)

    def _median_days(
        self, alive: FloatArray, x: FloatArray, T: FloatArray, max_days: float
    ) -> FloatArray:
        """:meth:`median_days_to_next_purchase` from ``p_alive`` of checked histories."""
        ok = alive > 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            log_s = np.log1p(-0.5 / np.where(ok, alive, 1.0))
            days = (self.alpha + T) * np.expm1(-log_s / (self.r + x))
        days = np.where(ok & (days <= max_days), days, np.nan)
        return np.asarray(days, dtype=np.float64)

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
        return self._expected(alive, horizon, x, T).reshape(shape)

    def _expected(
        self, alive: FloatArray, horizon: FloatArray, x: FloatArray, T: FloatArray
    ) -> FloatArray:
        """:meth:`expected_purchases` from ``p_alive`` of checked, flat histories."""
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
        return np.asarray(alive * active, dtype=np.float64)

    def _purchases_and_days(
        self, h: float, x: FloatArray, t_x: FloatArray, T: FloatArray, max_days: float
    ) -> tuple[FloatArray, FloatArray]:
        """:meth:`expected_purchases` and :meth:`median_days_to_next_purchase` at once.

        The same arithmetic, with ``p_alive`` computed once and a single cheap check of
        the histories (the full check runs only to word the error): a per-request path.
        """
        with np.errstate(invalid="ignore"):
            ok = (
                (x >= 0)
                & (x == np.round(x))
                & (t_x >= 0)
                & (t_x <= T)
                & ((x == 0) == (t_x == 0))
                & np.isfinite(T)
            )
        if not ok.all():
            _check_history(x, t_x, T)  # raises with the precise reason
        alive = special.expit(-self._log_odds_dropped(x, t_x, T))
        expected = self._expected(alive, np.full(x.shape, float(h)), x, T)
        return expected, self._median_days(alive, x, T, max_days)

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


def _check_spend_history(
    frequency: ArrayLike, mean_spend: ArrayLike
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    """Broadcast ``(x, m_x)``; ``m_x`` must be finite and > 0 where ``x >= 1``.

    Returns the arrays and the mask of repeat buyers (``x >= 1``); ``m_x`` of the
    others is replaced by NaN because it is not used.
    """
    x, m = (np.asarray(v, dtype=np.float64) for v in (frequency, mean_spend))
    try:
        x, m = np.broadcast_arrays(x, m)
    except ValueError as exc:
        raise ValueError(
            f"frequency and mean_spend have incompatible shapes {x.shape}, {m.shape}"
        ) from exc
    if not np.isfinite(x).all() or (x < 0).any() or (x != np.round(x)).any():
        raise ValueError("frequency (repeat purchases) must be finite whole numbers >= 0")
    repeat = x >= 1
    m_rep = m[repeat]
    if not (np.isfinite(m_rep).all() and (m_rep > 0).all()):
        raise ValueError(
            "mean_spend must be finite and > 0 for customers with frequency >= 1 "
            "(the Gamma-Gamma model has no zero or negative spends)"
        )
    return x, np.where(repeat, m, np.nan), repeat


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters: expected spend per purchase.

    Parameters
    ----------
    p : float
        Shape of the Gamma distribution of a customer's individual spends.
    q, v : float
        Shape and rate of the Gamma distribution of the spends' rate ``nu`` across
        customers; ``q > 1`` is required, because the population mean spend per
        purchase ``p v / (q - 1)`` is infinite otherwise.

    Notes
    -----
    ``frequency`` ``x`` is the number of purchases whose spends are averaged in
    ``mean_spend`` ``m_x``. With the BG/NBD convention these are the repeat purchases
    (the first purchase is left out, as in Fader, Hardie & Lee 2005), counted in the
    same unit as the BG/NBD ``frequency`` (e.g. purchase days), so that "spend per
    purchase" times "expected purchases" is a spend.
    """

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        for name in ("p", "q", "v"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"Gamma-Gamma parameter {name} must be a finite number > 0, got {value}"
                )
        if self.q <= 1.0:
            raise ValueError(
                f"Gamma-Gamma parameter q must be > 1 (finite mean spend), got {self.q}"
            )

    def to_dict(self) -> dict[str, float]:
        """The parameters as plain floats (JSON-serialisable)."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GammaGamma:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            On missing or extra keys, non-numbers, NaN, values <= 0 or ``q <= 1``.
        """
        return cls(**_read_params(data, ("p", "q", "v"), "Gamma-Gamma"))

    @property
    def population_mean_spend(self) -> float:
        """Mean spend per purchase across customers, ``E[p / nu] = p v / (q - 1)``."""
        return self.p * self.v / (self.q - 1.0)

    def conditional_expected_spend(self, frequency: ArrayLike, mean_spend: ArrayLike) -> FloatArray:
        """Expected spend per future purchase given the customer's past spends.

        For a customer with ``x >= 1`` purchases of mean spend ``m_x``, ``nu`` given the
        spends is ``Gamma(q + p x, v + x m_x)``, hence

        ``E[M | x, m_x] = E[p / nu | x, m_x] = p (v + x m_x) / (p x + q - 1)``,

        a weighted average of the population mean ``p v / (q - 1)`` (weight
        ``(q - 1) / (p x + q - 1)``) and the customer's own mean ``m_x``. Customers with
        ``x == 0`` get the population mean; their ``mean_spend`` is ignored (may be NaN).

        Parameters
        ----------
        frequency : array_like
            Number of purchases ``x`` behind ``mean_spend`` (whole numbers >= 0).
        mean_spend : array_like
            Mean spend of those purchases, finite and > 0 where ``x >= 1``.

        Returns
        -------
        numpy.ndarray
            Expected spend per purchase (broadcast shape of the inputs).
        """
        x, m, repeat = _check_spend_history(frequency, mean_spend)
        return self._spend(x, m, repeat)

    def _spend(self, x: FloatArray, m: FloatArray, repeat: NDArray[np.bool_]) -> FloatArray:
        """:meth:`conditional_expected_spend` where ``repeat`` rows have a valid ``m``."""
        with np.errstate(invalid="ignore"):
            own = self.p * (self.v + x * m) / (self.p * x + self.q - 1.0)
        return np.asarray(np.where(repeat, own, self.population_mean_spend), dtype=np.float64)


def expected_spend(
    bgnbd: BGNBD,
    gamma_gamma: GammaGamma,
    h: ArrayLike,
    frequency: ArrayLike,
    recency: ArrayLike,
    age: ArrayLike,
    mean_spend: ArrayLike,
) -> FloatArray:
    """Expected total spend in ``(T, T + h]``: expected purchases times spend per purchase.

    ``E[spend(h)] = E[Y(h) | x, t_x, T] * E[M | x, m_x]`` is exact when, as the
    Gamma-Gamma model assumes, spend per purchase is independent of the purchase
    process. Not discounted.

    Parameters
    ----------
    bgnbd, gamma_gamma : BGNBD, GammaGamma
        The fitted models.
    h : array_like
        Horizon in days (>= 0).
    frequency, recency, age : array_like
        The BG/NBD history (see :class:`BGNBD`); ``frequency`` also counts the
        purchases behind ``mean_spend``.
    mean_spend : array_like
        Mean spend of the repeat purchases (ignored where ``frequency == 0``).

    Returns
    -------
    numpy.ndarray
        Expected spend per customer.
    """
    count = bgnbd.expected_purchases(h, frequency, recency, age)
    per_purchase = gamma_gamma.conditional_expected_spend(frequency, mean_spend)
    return np.asarray(count * per_purchase, dtype=np.float64)


def predict_value(
    bgnbd: BGNBD,
    gamma_gamma: GammaGamma,
    frequency: ArrayLike,
    recency: ArrayLike,
    age: ArrayLike,
    mean_spend: ArrayLike,
    *,
    horizon_days: float = 365.0,
    max_days: float | None = None,
) -> pd.DataFrame:
    """All value predictions for a population that may include customers who never bought.

    Customers who never purchased are recognised by NaN ``age`` and ``recency`` (as the
    feature engine reports them; their ``frequency`` must be 0 or NaN). BG/NBD starts
    a customer's clock at the first purchase, so it says nothing about them: every
    column is NaN for them, and the caller fills it (e.g. with the average of
    never-buyers observed in training).

    Parameters
    ----------
    bgnbd, gamma_gamma : BGNBD, GammaGamma
        The fitted models.
    frequency, recency, age, mean_spend : array_like
        One-dimensional, one entry per customer (see :func:`expected_spend`).
    horizon_days : float, default 365
        Horizon of ``expected_purchases`` and ``expected_spend``.
    max_days : float, optional
        Cap of ``days_to_next_purchase`` (see
        :meth:`BGNBD.median_days_to_next_purchase`); default ``3 * horizon_days``.

    Returns
    -------
    pandas.DataFrame
        Columns ``p_alive``, ``expected_purchases``, ``spend_per_purchase``,
        ``expected_spend`` and ``days_to_next_purchase``, one row per customer in
        input order.
    """
    x, t_x, T, m = (
        np.ravel(np.asarray(v, dtype=np.float64)) for v in (frequency, recency, age, mean_spend)
    )
    if not (x.shape == t_x.shape == T.shape == m.shape):
        raise ValueError(
            "frequency, recency, age and mean_spend must have one entry per customer, got "
            f"{x.size}, {t_x.size}, {T.size}, {m.size}"
        )
    if max_days is None:
        max_days = 3.0 * float(horizon_days)
    never = np.isnan(T) & np.isnan(t_x)
    if not ((x[never] == 0) | np.isnan(x[never])).all():
        raise ValueError(
            "frequency must be 0 where recency and age are NaN (customers who never purchased)"
        )
    b = ~never
    columns = ("p_alive", "expected_purchases", "spend_per_purchase", "expected_spend")
    out = {name: np.full(x.size, np.nan) for name in (*columns, "days_to_next_purchase")}
    out["p_alive"][b] = bgnbd.p_alive(x[b], t_x[b], T[b])
    out["expected_purchases"][b] = bgnbd.expected_purchases(horizon_days, x[b], t_x[b], T[b])
    out["spend_per_purchase"][b] = gamma_gamma.conditional_expected_spend(x[b], m[b])
    out["expected_spend"][b] = out["expected_purchases"][b] * out["spend_per_purchase"][b]
    out["days_to_next_purchase"][b] = bgnbd.median_days_to_next_purchase(
        x[b], t_x[b], T[b], max_days=max_days
    )
    return pd.DataFrame(out)


#: Default value tiers: top 1 %, 5 %, 10 %, 25 % and 50 % of predicted spend.
VALUE_TIER_SHARES: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50)


def _check_shares(shares: Iterable[Any]) -> tuple[float, ...]:
    """Top shares as floats, strictly increasing, each in ``(0, 1)``."""
    try:
        values = tuple(float(s) for s in shares)
    except (TypeError, ValueError) as exc:
        raise ValueError("tier shares must be a sequence of numbers") from exc
    if not values:
        raise ValueError("tier shares must not be empty")
    if not all(math.isfinite(s) and 0.0 < s < 1.0 for s in values):
        raise ValueError(f"tier shares must lie strictly between 0 and 1, got {values}")
    if any(hi <= lo for lo, hi in zip(values, values[1:], strict=False)):
        raise ValueError(f"tier shares must be strictly increasing, got {values}")
    return values


def _tier_label(share: float) -> str:
    return f"top_{round(share * 100.0, 6):g}"


@dataclass(frozen=True)
class TierThresholds:
    """Spend thresholds of the value tiers, fixed on a reference population.

    Parameters
    ----------
    shares : tuple of float
        Top shares, strictly increasing in ``(0, 1)``, e.g. ``(0.01, 0.05)``.
    thresholds : tuple of float
        Finite spend thresholds, one per share, non-increasing: a customer whose
        spend is ``>= thresholds[i]`` is at least in tier ``i``.

    Notes
    -----
    The labels are ``top_<100 * share>`` (``top_1``, ``top_5``, ...) and ``rest``; a
    NaN spend (no prediction) is labelled ``unknown``.
    """

    shares: tuple[float, ...]
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        shares = _check_shares(self.shares)
        try:
            thresholds = tuple(float(t) for t in self.thresholds)
        except (TypeError, ValueError) as exc:
            raise ValueError("tier thresholds must be a sequence of numbers") from exc
        if len(thresholds) != len(shares):
            raise ValueError(
                f"{len(shares)} tier shares but {len(thresholds)} thresholds: need one per share"
            )
        if not all(math.isfinite(t) for t in thresholds):
            raise ValueError("tier thresholds must be finite numbers")
        if any(lo > hi for hi, lo in zip(thresholds, thresholds[1:], strict=False)):
            raise ValueError("tier thresholds must not increase from the top tier down")
        object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "thresholds", thresholds)

    @property
    def labels(self) -> tuple[str, ...]:
        """Tier labels from the top down, ending with ``rest``."""
        return (*(_tier_label(s) for s in self.shares), "rest")

    def to_dict(self) -> dict[str, list[float]]:
        """Shares and thresholds as lists of plain floats (JSON-serialisable)."""
        return {"shares": list(self.shares), "thresholds": list(self.thresholds)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TierThresholds:
        """Rebuild from :meth:`to_dict` output, refusing anything else with one line."""
        if not isinstance(data, Mapping):
            raise ValueError(f"tier thresholds must be a mapping, got {type(data).__name__}")
        if set(data) != {"shares", "thresholds"}:
            raise ValueError("tier thresholds need exactly the keys ['shares', 'thresholds']")
        shares, thresholds = data["shares"], data["thresholds"]
        for name, seq in (("shares", shares), ("thresholds", thresholds)):
            if not isinstance(seq, list | tuple) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in seq
            ):
                raise ValueError(f"tier {name} must be a list of numbers")
        return cls(shares=tuple(shares), thresholds=tuple(thresholds))


def tier_thresholds(
    spend: ArrayLike, shares: Sequence[float] = VALUE_TIER_SHARES, *, ties: str = "higher"
) -> TierThresholds:
    """Spend thresholds that put the top ``shares`` of a reference population in each tier.

    With ``n`` customers of known (non-NaN) spend, the threshold of share ``s`` is the
    ``k``-th largest spend, ``k = max(1, ceil(s n))``: exactly ``k`` customers are at or
    above it when spends are distinct. Equal spends always share a tier; where a block
    of them straddles the cut, ``ties`` says where it goes.

    Parameters
    ----------
    spend : array_like
        Predicted spend of the reference (training) population; NaN entries are left
        out.
    shares : sequence of float, default ``VALUE_TIER_SHARES``
        Top shares, strictly increasing, each strictly between 0 and 1.
    ties : {"higher", "lower"}, default "higher"
        ``"higher"``: the whole block enters the tier (a tier may hold more than its
        share). ``"lower"``: the block stays below (the threshold is the next float
        above the tied spend), so no tier holds more than its share of the reference
        population. Use ``"lower"`` when many customers share one prediction, such as
        a fill for customers a model says nothing about: otherwise they all rise into
        whichever tier's cut falls inside their block.

    Returns
    -------
    TierThresholds
        Apply to any population with :func:`value_tier`.

    Raises
    ------
    ValueError
        On bad shares or ``ties``, infinite spend, or no spend that is not NaN.
    """
    checked = _check_shares(shares)
    values = np.ravel(np.asarray(spend, dtype=np.float64))
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("cannot set value tier thresholds without any predicted spend")
    if not np.isfinite(values).all():
        raise ValueError("predicted spend must not be infinite")
    if ties not in ("higher", "lower"):
        raise ValueError(f"ties must be 'higher' or 'lower', not {ties!r}")
    descending = np.sort(values)[::-1]
    n = values.size
    # ceil(s n) up to float noise (0.07 * 100 is 7.000000000000001)
    ks = [min(n, max(1, math.ceil(s * n - 1e-9))) for s in checked]
    thresholds = []
    for k in ks:
        cut = float(descending[k - 1])
        if ties == "lower" and k < n and descending[k] == cut:
            cut = float(np.nextafter(cut, np.inf))  # the block straddles the cut: below
        thresholds.append(cut)
    return TierThresholds(shares=checked, thresholds=tuple(thresholds))


def value_tier(spend: ArrayLike, thresholds: TierThresholds) -> NDArray[np.str_]:
    """Value tier label of each customer.

    A customer is in the highest tier whose threshold their spend reaches
    (``spend >= threshold``; equal spends always get the same tier), ``rest`` below
    the last threshold and ``unknown`` when the spend is NaN (no prediction, e.g. a
    customer BG/NBD cannot describe before the caller fills it in).

    Parameters
    ----------
    spend : array_like
        Predicted spend.
    thresholds : TierThresholds
        From :func:`tier_thresholds` on the reference population.

    Returns
    -------
    numpy.ndarray
        String labels (``top_1``, ..., ``rest``, ``unknown``), shape of ``spend``.
    """
    values = np.asarray(spend, dtype=np.float64)
    ascending = np.asarray(thresholds.thresholds[::-1], dtype=np.float64)
    # number of thresholds the spend reaches; the top tier is reached by all of them
    reached = np.searchsorted(ascending, np.where(np.isnan(values), -np.inf, values), "right")
    labels = np.asarray([*thresholds.labels, "unknown"])
    index = np.where(np.isnan(values), len(labels) - 1, len(ascending) - reached)
    return np.asarray(labels[index])


#: Learned heads a :class:`ValueModel` can use instead of its baselines, in this order.
VALUE_HEADS: tuple[str, ...] = ("purchases", "spend")


def _real(value: object, what: str) -> float:
    """A finite float from an artifact value that must be a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class ValueModel:
    """Customer value at ``as_of``: purchases, spend, next purchase date and tier.

    Parameters
    ----------
    bgnbd : BGNBD
        Purchase-count baseline, fitted on every customer with a purchase.
    gamma_gamma : GammaGamma or None
        Spend-per-purchase baseline; ``None`` when the log has no purchase amounts
        (spend is then NaN and the tiers rank expected purchases).
    horizon_days : int
        Horizon of ``expected_purchases`` and ``expected_spend``, in days.
    tiers : TierThresholds
        Thresholds fixed on the training population's predicted spend (expected
        purchases without amounts).
    never_buyer_purchases, never_buyer_spend : float
        What a customer with events but no purchase yet is expected to buy and spend
        in the horizon (BG/NBD says nothing about them): measured on such customers in
        training. ``never_buyer_spend`` is NaN exactly when ``gamma_gamma`` is None.
    heads : tuple of str
        Learned heads that replace the baselines, a subset of :data:`VALUE_HEADS`
        (``"spend"`` needs amounts). Their predictions are passed to :meth:`predict`.

    Notes
    -----
    The next purchase date always comes from BG/NBD
    (:meth:`BGNBD.median_days_to_next_purchase`, capped at three horizons); there is
    none for customers who never bought.
    """

    bgnbd: BGNBD
    gamma_gamma: GammaGamma | None
    horizon_days: int
    tiers: TierThresholds
    never_buyer_purchases: float
    never_buyer_spend: float
    heads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bgnbd, BGNBD):
            raise ValueError("bgnbd must be a BGNBD model")
        if self.gamma_gamma is not None and not isinstance(self.gamma_gamma, GammaGamma):
            raise ValueError("gamma_gamma must be a GammaGamma model or None")
        if not isinstance(self.tiers, TierThresholds):
            raise ValueError("tiers must be TierThresholds")
        h = self.horizon_days
        if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 1 <= h <= 3650:
            raise ValueError(f"value horizon_days must be a whole number from 1 to 3650, got {h!r}")
        object.__setattr__(self, "horizon_days", int(h))
        purchases = float(self.never_buyer_purchases)
        spend = float(self.never_buyer_spend)
        if not (math.isfinite(purchases) and purchases >= 0):
            raise ValueError("the never-buyer purchases fill must be a finite number >= 0")
        if self.gamma_gamma is None:
            if not math.isnan(spend):
                raise ValueError("a never-buyer spend fill needs a Gamma-Gamma model (amounts)")
        elif not (math.isfinite(spend) and spend >= 0):
            raise ValueError("the never-buyer spend fill must be a finite number >= 0")
        object.__setattr__(self, "never_buyer_purchases", purchases)
        object.__setattr__(self, "never_buyer_spend", spend)
        heads = tuple(self.heads)
        if any(head not in VALUE_HEADS for head in heads) or len(set(heads)) != len(heads):
            raise ValueError(f"value heads must be distinct names among {list(VALUE_HEADS)}")
        if "spend" in heads and self.gamma_gamma is None:
            raise ValueError("a learned spend head needs purchase amounts (a Gamma-Gamma model)")
        object.__setattr__(self, "heads", tuple(h for h in VALUE_HEADS if h in heads))

    @property
    def has_spend(self) -> bool:
        """Whether spend is predicted (the log had purchase amounts)."""
        return self.gamma_gamma is not None

    @property
    def tier_by(self) -> str:
        """What the tiers rank: ``expected_spend``, or ``expected_purchases`` without amounts."""
        return "expected_spend" if self.has_spend else "expected_purchases"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (NaN spend fill stored as ``None``)."""
        return {
            "bgnbd": self.bgnbd.to_dict(),
            "gamma_gamma": None if self.gamma_gamma is None else self.gamma_gamma.to_dict(),
            "horizon_days": self.horizon_days,
            "tiers": self.tiers.to_dict(),
            "never_buyer": {
                "purchases": self.never_buyer_purchases,
                "spend": None if math.isnan(self.never_buyer_spend) else self.never_buyer_spend,
            },
            "heads": list(self.heads),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValueModel:
        """Rebuild from :meth:`to_dict` output, refusing anything else with one line."""
        keys = {"bgnbd", "gamma_gamma", "horizon_days", "tiers", "never_buyer", "heads"}
        if not isinstance(data, Mapping):
            raise ValueError(f"the value model must be a mapping, got {type(data).__name__}")
        if set(data) != keys:
            raise ValueError(f"the value model needs exactly the keys {sorted(keys)}")
        fill = data["never_buyer"]
        if not isinstance(fill, Mapping) or set(fill) != {"purchases", "spend"}:
            raise ValueError("value never_buyer needs exactly the keys ['purchases', 'spend']")
        heads = data["heads"]
        if not isinstance(heads, list) or not all(isinstance(h, str) for h in heads):
            raise ValueError("value heads must be a list of names")
        horizon = data["horizon_days"]
        if isinstance(horizon, bool) or not isinstance(horizon, int):
            raise ValueError("value horizon_days must be a whole number")
        gg = data["gamma_gamma"]
        return cls(
            bgnbd=BGNBD.from_dict(data["bgnbd"]),
            gamma_gamma=None if gg is None else GammaGamma.from_dict(gg),
            horizon_days=horizon,
            tiers=TierThresholds.from_dict(data["tiers"]),
            never_buyer_purchases=_real(fill["purchases"], "value never_buyer purchases"),
            never_buyer_spend=(
                math.nan
                if fill["spend"] is None
                else _real(fill["spend"], "value never_buyer spend")
            ),
            heads=tuple(heads),
        )

    def predict(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        age: ArrayLike,
        mean_spend: ArrayLike,
        *,
        learned_purchases: ArrayLike | None = None,
        learned_spend: ArrayLike | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Value of each customer from their BTYD features (and learned heads' output).

        Numpy only, so one customer costs tens of microseconds (the HTTP API calls it
        per request).

        Parameters
        ----------
        frequency, recency, age, mean_spend : array_like
            The ``btyd_frequency``, ``btyd_recency_days``, ``btyd_age_days`` and
            ``btyd_mean_spend`` features, one entry per customer; NaN recency and age
            mark a customer who never bought. A repeat buyer without a recorded
            amount (NaN or non-positive mean spend) gets the population spend per
            purchase.
        learned_purchases, learned_spend : array_like, optional
            The learned heads' predictions over the horizon; required exactly for
            the heads in :attr:`heads`.

        Returns
        -------
        dict of numpy.ndarray
            ``expected_purchases`` and ``expected_spend`` (float64, spend NaN without
            amounts), ``days_to_next_purchase`` (float64, NaN when not expected or
            never bought) and ``value_tier`` (str labels of :attr:`tiers`).
        """
        x, t_x, T, m = (
            np.ravel(np.asarray(v, dtype=np.float64)) for v in (frequency, recency, age, mean_spend)
        )
        n = x.size
        if not (t_x.size == T.size == m.size == n):
            raise ValueError("frequency, recency, age and mean_spend must have one entry each")
        for head, given in (("purchases", learned_purchases), ("spend", learned_spend)):
            if (head in self.heads) != (given is not None):
                raise ValueError(
                    f"learned {head} predictions are needed exactly when the {head} head is used"
                )
        buyer = ~(np.isnan(T) | np.isnan(t_x))
        purchases = np.full(n, self.never_buyer_purchases)
        spend = np.full(n, self.never_buyer_spend)
        days = np.full(n, np.nan)
        if buyer.any():
            xb, tb, Tb = x[buyer], t_x[buyer], T[buyer]
            count, days[buyer] = self.bgnbd._purchases_and_days(
                self.horizon_days, xb, tb, Tb, 3.0 * self.horizon_days
            )
            purchases[buyer] = count
            if self.gamma_gamma is not None:
                mb = m[buyer]
                # no usable amount on the repeat days: the population's spend per purchase
                with np.errstate(invalid="ignore"):
                    repeat = (xb >= 1) & (mb > 0) & np.isfinite(mb)
                spend[buyer] = count * self.gamma_gamma._spend(xb, mb, repeat)
        if learned_purchases is not None:
            purchases = np.ravel(np.asarray(learned_purchases, dtype=np.float64))
        if learned_spend is not None:
            spend = np.ravel(np.asarray(learned_spend, dtype=np.float64))
        if purchases.size != n or spend.size != n:
            raise ValueError("learned predictions must have one entry per customer")
        ranked = spend if self.has_spend else purchases
        return {
            "expected_purchases": purchases,
            "expected_spend": spend,
            "days_to_next_purchase": days,
            "value_tier": self._tier_of(ranked),
        }

    @functools.cached_property
    def _tier_table(self) -> tuple[FloatArray, NDArray[np.str_]]:
        """:func:`value_tier`'s thresholds (ascending) and labels, built once."""
        ascending = np.asarray(self.tiers.thresholds[::-1], dtype=np.float64)
        return ascending, np.asarray([*self.tiers.labels, "unknown"])

    def _tier_of(self, values: FloatArray) -> NDArray[np.str_]:
        """:func:`value_tier` with the tables precomputed (the same rule)."""
        ascending, labels = self._tier_table
        missing = np.isnan(values)
        reached = np.searchsorted(ascending, np.where(missing, -np.inf, values), "right")
        return np.asarray(labels[np.where(missing, len(labels) - 1, len(ascending) - reached)])
