"""Held-out evaluation of customer value predictions (purchases, spend, next order date).

A value model predicts, per customer at ``as_of``, the purchases and the spend in the
following ``horizon_days`` and the days to the next purchase. :func:`future_value`
reads what actually happened from the event log, in the unit the features count
(purchase days), and :func:`value_metrics` / :func:`value_plots` compare the two.

Point in time: the predictions see only events before ``as_of`` (the feature engine's
rule); the outcomes are the events in ``[as_of, as_of + horizon_days)``. A customer is
evaluated when they had an event before ``as_of`` (a row of ``build_features``), so
customers who arrive inside the window are not part of the population.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
    to_canonical_frame,
)
from customer_lifecycle.features.definition import DAY_NS, FeatureDefinition, load_definition
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["future_value", "value_metrics", "value_plots"]

FloatArray = NDArray[np.float64]

#: Share of customers in the "top decile" of the captured-revenue metric.
TOP_SHARE = 0.1
#: Bins of the count calibration and of the predicted-vs-actual plots.
N_BINS = 10


def future_value(
    events: pd.DataFrame,
    as_of: object,
    horizon_days: float = 365.0,
    *,
    definition: FeatureDefinition | None = None,
    customers: ArrayLike | None = None,
) -> pd.DataFrame:
    """What each customer actually bought in ``[as_of, as_of + horizon_days)``.

    Purchases are counted the way ``btyd_frequency`` counts them: distinct UTC
    calendar days with an event of the definition's purchase group. A purchase day is
    new only if the customer had no purchase on that UTC day before ``as_of`` (possible
    when ``as_of`` is not midnight), so ``purchases`` is exactly the increase of the
    ``purchase_days`` feature from ``as_of`` to ``as_of + horizon_days``.

    Parameters
    ----------
    events : pandas.DataFrame
        Event frame (``customer_id``, ``timestamp``, ``event_type``, optionally
        ``amount``); canonical dtypes are used as they are, others converted.
    as_of : str or timestamp
        Start of the window (ISO 8601; naive means UTC), the ``as_of`` of the features
        the predictions were made from.
    horizon_days : float, default 365
        Length of the window in days, > 0.
    definition : FeatureDefinition, optional
        Says which event types are purchases (its ``purchase_group``); the shipped
        default when ``None``.
    customers : array_like of str, optional
        The rows to return, in this order (customers without a purchase get 0). By
        default the customers with an event before ``as_of``, sorted: the rows of
        ``build_features(events, as_of=as_of)``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``customer_id``: ``purchases`` (new purchase days in the window),
        ``spend`` (total recorded amount of the purchase events in the window; events
        without an amount add nothing; refunds are not subtracted) and
        ``days_to_next_purchase`` (days from ``as_of`` to the first purchase that
        starts a new purchase day; NaN without one).

    Raises
    ------
    ValueError
        When ``horizon_days`` is not a positive number, or ``events`` or ``as_of``
        cannot be read.
    """
    if not (isinstance(horizon_days, int | float) and math.isfinite(horizon_days)):
        raise ValueError(f"horizon_days must be a finite number > 0, got {horizon_days!r}")
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be a finite number > 0, got {horizon_days!r}")
    d = definition or load_definition()
    ev = to_canonical_frame(events)
    cutoff = parse_as_of(as_of).as_unit("ns").value
    end = cutoff + round(horizon_days * DAY_NS)
    t = ev[TIMESTAMP].dt.as_unit("ns").to_numpy("datetime64[ns]").view(np.int64)
    ids = np.asarray(ev[CUSTOMER_ID].astype(str).to_numpy(), dtype=object)
    bought = ev[EVENT_TYPE].astype(str).isin(list(d.groups[d.purchase_group])).to_numpy()
    amount = (
        ev[AMOUNT].to_numpy(np.float64, na_value=np.nan)
        if AMOUNT in ev.columns
        else np.full(len(ev), np.nan)
    )
    day = t // DAY_NS
    before, inside = t < cutoff, (t >= cutoff) & (t < end)
    # Only as_of's own UTC day can hold purchases on both sides of as_of; a customer
    # who bought on it before as_of has already counted it.
    as_of_day = cutoff // DAY_NS
    counted = np.unique(ids[bought & before & (day == as_of_day)])
    new_day = bought & inside & ~((day == as_of_day) & np.isin(ids, counted))

    if customers is None:
        rows = pd.Index(np.unique(ids[before]), name=CUSTOMER_ID)
    else:
        rows = pd.Index(np.asarray(customers).astype(str), name=CUSTOMER_ID)
        if rows.has_duplicates:
            raise ValueError("customers lists a customer more than once")
    # times as int64 offsets from as_of: exact, where float nanoseconds since 1970 are not
    days = pd.DataFrame({"cid": ids[new_day], "day": day[new_day], "t": t[new_day] - cutoff})
    purchases = days.drop_duplicates(["cid", "day"]).groupby("cid").size()
    first = days.groupby("cid")["t"].min()
    spend = pd.Series(np.nan_to_num(amount[bought & inside]), index=ids[bought & inside])
    spend = spend.groupby(level=0).sum()
    return pd.DataFrame(
        {
            "purchases": purchases.reindex(rows, fill_value=0).to_numpy(np.float64),
            "spend": spend.reindex(rows, fill_value=0.0).to_numpy(np.float64),
            "days_to_next_purchase": first.reindex(rows).to_numpy(np.float64) / DAY_NS,
        },
        index=rows,
    )


def _vector(name: str, values: ArrayLike) -> FloatArray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
    return out


def _spearman(a: FloatArray, b: FloatArray) -> float:
    # undefined (not 0) for a constant side; scipy would warn and return NaN
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)


def _errors(actual: FloatArray, predicted: FloatArray) -> tuple[float, float]:
    if actual.size == 0:
        return math.nan, math.nan
    err = predicted - actual
    return float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err * err)))


def _top_share(actual: FloatArray, score: FloatArray, share: float) -> float:
    """Share of ``actual``'s total held by the ``share`` of rows with the highest ``score``.

    The top group holds ``ceil(share * n)`` rows; rows tied at the cut-off enter in
    proportion (the expected value under a random tie-break), so the result does not
    depend on the input order and a perfect score gives exactly the oracle's share.
    """
    total = actual.sum()
    if actual.size == 0 or total <= 0:
        return math.nan
    k = math.ceil(share * actual.size)
    cut = np.sort(score)[::-1][k - 1]
    above, tied = score > cut, score == cut
    top = actual[above].sum() + actual[tied].sum() * (k - above.sum()) / tied.sum()
    return float(top / total)


def _bins(predicted: FloatArray, n_bins: int) -> NDArray[np.int64]:
    """Bin of each row by quantiles of ``predicted``; equal predictions share a bin."""
    if predicted.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(predicted, np.arange(1, n_bins) / n_bins)
    return np.searchsorted(edges, predicted, side="left").astype(np.int64)


def _binned_means(
    actual: FloatArray, predicted: FloatArray, n_bins: int
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Mean predicted, mean actual and size of each non-empty bin of ``predicted``."""
    b = _bins(predicted, n_bins)
    size = np.bincount(b, minlength=n_bins)
    used = size > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=predicted, minlength=n_bins) / size
        mean_a = np.bincount(b, weights=actual, minlength=n_bins) / size
    return mean_p[used], mean_a[used], size[used]


def value_metrics(
    actual_purchases: ArrayLike,
    actual_spend: ArrayLike,
    predicted_purchases: ArrayLike,
    predicted_spend: ArrayLike,
    predicted_next_days: ArrayLike | None = None,
    actual_next_days: ArrayLike | None = None,
    *,
    min_bin_customers: int = 30,
) -> dict[str, float]:
    """Compare value predictions with what happened in the horizon (:func:`future_value`).

    Customers whose prediction is NaN (e.g. those who never purchased, for whom
    BG/NBD says nothing) are left out of the metrics of that prediction and counted.

    Parameters
    ----------
    actual_purchases, actual_spend : array_like
        Purchase days and spend in the horizon, one per customer, never NaN.
    predicted_purchases, predicted_spend : array_like
        The predictions for the same customers, in the same order; NaN allowed.
    predicted_next_days : array_like, optional
        Predicted days from ``as_of`` to the next purchase; NaN where the model gives
        none. Needs ``actual_next_days``.
    actual_next_days : array_like, optional
        Days from ``as_of`` to the first purchase in the horizon, NaN for customers
        who did not buy in it.
    min_bin_customers : int, default 30
        Fewest customers a decile of predicted purchases needs to enter
        ``purchases_calibration_max_abs_log_ratio``.

    Returns
    -------
    dict[str, float]
        ``n_customers``; for ``purchases`` and ``spend`` each: ``<x>_n_excluded``
        (NaN predictions), ``<x>_mae``, ``<x>_rmse``, ``<x>_spearman``;
        ``spend_excluded_revenue_share`` (actual spend of the customers left out, over
        everyone's); ``spend_top_decile_share`` (share of the evaluated customers'
        actual spend made by the 10 % with the highest predicted spend) and
        ``spend_top_decile_share_best`` (the same, ranked by actual spend: the best
        possible); ``purchases_calibration_ratio`` (mean predicted over mean actual
        purchases), ``purchases_calibration_max_abs_log_ratio`` (the largest
        ``|log(mean predicted / mean actual)|`` over deciles of predicted purchases
        with at least ``min_bin_customers`` customers and both means > 0; equal
        predictions share a decile) and ``purchases_calibration_deciles`` (how many
        deciles entered it). With next-purchase predictions also ``next_days_buyers``
        (customers who bought in the horizon), ``next_days_coverage`` (share of them
        with a predicted date), ``next_days_mae`` and ``next_days_median_ae`` (over
        those). Undefined values are NaN (e.g. Spearman of a constant, a share of zero
        spend).

    Raises
    ------
    ValueError
        On arrays of different lengths, NaN actual purchases or spend, or only one
        of the next-purchase arrays.
    """
    ya = _vector("actual_purchases", actual_purchases)
    sa = _vector("actual_spend", actual_spend)
    yp = _vector("predicted_purchases", predicted_purchases)
    sp = _vector("predicted_spend", predicted_spend)
    n = ya.size
    if not (sa.size == yp.size == sp.size == n):
        raise ValueError(
            "actual and predicted arrays differ in length: "
            f"{ya.size}, {sa.size}, {yp.size}, {sp.size}"
        )
    if np.isnan(ya).any() or np.isnan(sa).any():
        raise ValueError("actual purchases and spend must not be NaN (0 when nothing was bought)")
    if (predicted_next_days is None) != (actual_next_days is None):
        raise ValueError("give both predicted_next_days and actual_next_days, or neither")
    if min_bin_customers < 1:
        raise ValueError("min_bin_customers must be >= 1")

    out: dict[str, float] = {"n_customers": float(n)}
    ok_p = ~np.isnan(yp)
    ok_s = ~np.isnan(sp)
    for name, ok, actual, pred in (
        ("purchases", ok_p, ya, yp),
        ("spend", ok_s, sa, sp),
    ):
        a, p = actual[ok], pred[ok]
        out[f"{name}_n_excluded"] = float(n - ok.sum())
        out[f"{name}_mae"], out[f"{name}_rmse"] = _errors(a, p)
        out[f"{name}_spearman"] = _spearman(a, p)

    total = sa.sum()
    out["spend_excluded_revenue_share"] = float(sa[~ok_s].sum() / total) if total > 0 else math.nan
    out["spend_top_decile_share"] = _top_share(sa[ok_s], sp[ok_s], TOP_SHARE)
    out["spend_top_decile_share_best"] = _top_share(sa[ok_s], sa[ok_s], TOP_SHARE)

    a, p = ya[ok_p], yp[ok_p]
    out["purchases_calibration_ratio"] = (
        float(p.mean() / a.mean()) if a.size and a.mean() > 0 else math.nan
    )
    mean_p, mean_a, size = _binned_means(a, p, N_BINS)
    usable = (size >= min_bin_customers) & (mean_p > 0) & (mean_a > 0)
    logs = np.abs(np.log(mean_p[usable] / mean_a[usable]))
    out["purchases_calibration_max_abs_log_ratio"] = float(logs.max()) if logs.size else math.nan
    out["purchases_calibration_deciles"] = float(usable.sum())

    if predicted_next_days is not None and actual_next_days is not None:
        dp = _vector("predicted_next_days", predicted_next_days)
        da = _vector("actual_next_days", actual_next_days)
        if not (dp.size == da.size == n):
            raise ValueError(
                f"next-purchase arrays differ in length from the others: {dp.size}, {da.size}, {n}"
            )
        buyers = ~np.isnan(da)
        dated = buyers & ~np.isnan(dp)
        err = np.abs(dp[dated] - da[dated])
        out["next_days_buyers"] = float(buyers.sum())
        out["next_days_coverage"] = float(dated.sum() / buyers.sum()) if buyers.any() else math.nan
        out["next_days_mae"] = float(err.mean()) if err.size else math.nan
        out["next_days_median_ae"] = float(np.median(err)) if err.size else math.nan
    return out


def value_plots(
    actual_purchases: ArrayLike,
    actual_spend: ArrayLike,
    predicted_purchases: ArrayLike,
    predicted_spend: ArrayLike,
    *,
    n_bins: int = N_BINS,
) -> dict[str, Figure]:
    """Evaluation figures of value predictions, for ``mlflow.log_figure``.

    Customers with a NaN prediction are left out of that prediction's panel, as in
    :func:`value_metrics`. Figures are built without pyplot (no global state).

    Parameters
    ----------
    actual_purchases, actual_spend, predicted_purchases, predicted_spend : array_like
        As for :func:`value_metrics`.
    n_bins : int, default 10
        Quantile bins of the predicted-vs-actual panels.

    Returns
    -------
    dict[str, matplotlib.figure.Figure]
        ``"value_predicted_vs_actual"``: mean actual against mean predicted per
        quantile bin of the prediction, for purchases and for spend, with the
        diagonal; ``"value_gains"``: cumulative share of actual spend against the
        share of customers ranked by predicted spend, with the best possible ranking (by
        actual spend) and random ranking.
    """
    ya = _vector("actual_purchases", actual_purchases)
    sa = _vector("actual_spend", actual_spend)
    yp = _vector("predicted_purchases", predicted_purchases)
    sp = _vector("predicted_spend", predicted_spend)
    if not (sa.size == yp.size == sp.size == ya.size):
        raise ValueError("actual and predicted arrays differ in length")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")

    calib = Figure(figsize=(10, 4.5), layout="constrained")
    for ax, title, actual, pred in zip(
        calib.subplots(1, 2),
        ("purchases (purchase days)", "spend"),
        (ya, sa),
        (yp, sp),
        strict=True,
    ):
        ok = ~np.isnan(pred)
        mean_p, mean_a, size = _binned_means(actual[ok], pred[ok], n_bins)
        top = float(max(mean_p.max(initial=0.0), mean_a.max(initial=0.0))) or 1.0
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.plot(mean_p, mean_a, marker="o", label=f"{n_bins} quantile bins")
        ax.set_xlabel("mean predicted")
        ax.set_ylabel("mean actual")
        ax.set_title(f"{title}: {int(ok.sum())} customers")
        ax.legend(loc="upper left")

    gains = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = gains.subplots()
    ok = ~np.isnan(sp)
    a = sa[ok]
    share = np.arange(a.size + 1) / max(a.size, 1)
    total = a.sum()
    for label, score in (("model", sp[ok]), ("best possible", a)):
        if total > 0:
            # stable order: ties keep input order (the plot only; metrics split ties)
            ranked = a[np.argsort(-score, kind="stable")]
            ax.plot(share, np.concatenate([[0.0], np.cumsum(ranked) / total]), label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random")
    ax.set_xlabel("share of customers, by predicted spend")
    ax.set_ylabel("share of actual spend")
    ax.set_title("cumulative spend captured")
    ax.legend(loc="lower right")
    return {"value_predicted_vs_actual": calib, "value_gains": gains}
