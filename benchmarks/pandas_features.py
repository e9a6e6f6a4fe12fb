"""The feature definition as a straightforward pandas group-by: the baseline and the oracle.

This is written independently of :mod:`features.engine` from the documented meaning of
every column (:meth:`features.definition.FeatureDefinition.describe`), the way a data
scientist would do it with vectorised pandas group-bys:

* counts, last times and amounts are first aggregated per ``(customer, event_type)``,
  which is much smaller than the log, then summed (or maxed) into the event groups
  through the type -> group membership table (a type may sit in several groups);
* distinct active days come from one ``(customer, day)`` group-by;
* purchase cadence from the distinct purchase days, ``diff`` within each customer, and
  the repeat spend from those days' amount totals after each customer's first day.

It serves two purposes: the pandas baseline in :mod:`benchmarks.features`, and the
oracle of the engine parity property test (``tests/features/test_engine_parity.py``).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
    parse_timestamps,
)
from customer_lifecycle.features.definition import ALL, DAY_NS, FeatureDefinition

_CUST, _TYPE = "cust", "etype"


def pandas_features(
    events: pd.DataFrame, *, as_of: object, definition: FeatureDefinition
) -> pd.DataFrame:
    """Features at ``as_of`` with pandas group-bys; same layout as ``build_features``.

    Parameters
    ----------
    events
        Event frame with ``customer_id``, ``timestamp``, ``event_type`` and optionally
        ``amount`` (canonical dtypes are fastest). Not modified.
    as_of
        The point in time; only events with ``timestamp < as_of`` are read.
    definition
        The feature definition.

    Returns
    -------
    pandas.DataFrame
        One ``float64`` row per customer with an event before ``as_of``, indexed by
        ``customer_id`` in sorted order, columns ``definition.feature_names()``.
    """
    d = definition
    cutoff = parse_as_of(as_of).as_unit("ns").value
    ts = events[TIMESTAMP]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = parse_timestamps(ts)
    t = ts.dt.tz_convert("UTC").dt.as_unit("ns").to_numpy("datetime64[ns]").view(np.int64)
    keep = t < cutoff
    if not keep.any():
        index = pd.Index([], dtype="str", name=CUSTOMER_ID)
        return pd.DataFrame(columns=d.feature_names(), index=index, dtype=np.float64)
    # Ages (as_of - timestamp) stay int64 nanoseconds until the final division, so that
    # day counts are exact to the nanosecond whatever the epoch.
    ev = pd.DataFrame(
        {
            _CUST: events[CUSTOMER_ID].astype("category").array[keep],
            _TYPE: events[EVENT_TYPE].astype("category").array[keep],
            "age": cutoff - t[keep],
            "day": t[keep] // DAY_NS,
        }
    )
    if AMOUNT in events.columns:
        ev["amount"] = pd.to_numeric(events[AMOUNT], errors="coerce").to_numpy(np.float64)[keep]
    else:
        ev["amount"] = np.nan

    # -- per (customer, event type): counts per window, last time, amounts ------------
    windows = sorted({*d.count_windows, *d.funnel_windows_days})
    aggs: dict[str, tuple[str, str]] = {
        "n_all": ("age", "size"),
        "min_age": ("age", "min"),
        "max_age": ("age", "max"),
    }
    for w in windows:
        ev[f"in_{w}"] = ev["age"] <= w * DAY_NS
        aggs[f"n_{w}"] = (f"in_{w}", "sum")
    aggs["amt_all"] = ("amount", "sum")
    aggs["amt_n"] = ("amount", "count")
    for w in d.monetary_windows_days:
        ev[f"amt_{w}"] = ev["amount"].where(ev["age"] <= w * DAY_NS)
        aggs[f"amt_{w}"] = (f"amt_{w}", "sum")
    # "when last seen" windows end at the customer's last event, not at as_of
    back = ev["age"] - ev.groupby(_CUST, observed=True)["age"].transform("min")
    for w in d.last_active_windows_days:
        ev[f"last_{w}"] = back <= w * DAY_NS
        aggs[f"last_{w}"] = (f"last_{w}", "sum")
    del back
    by_type = ev.groupby([_CUST, _TYPE], observed=True, sort=False).agg(**aggs).reset_index()
    sums = [c for c in aggs if not c.endswith("_age")]

    # -- into groups through the membership table, plus the implicit "all" ------------
    members = pd.DataFrame(
        [(g, typ) for g, types in d.groups.items() for typ in types], columns=["group", _TYPE]
    )
    by_type[_TYPE] = by_type[_TYPE].astype(str)
    per_group = by_type.merge(members, on=_TYPE).groupby([_CUST, "group"], observed=True)
    everyone = by_type.groupby(_CUST, observed=True).agg(
        **{c: (c, "sum") for c in sums}, min_age=("min_age", "min"), max_age=("max_age", "max")
    )
    customers = everyone.index
    # Every (column, group), including groups that no customer has, which stay 0 / NaN.
    sum_cols = pd.MultiIndex.from_product([sums, list(d.groups)])
    group_sums = cast(pd.DataFrame, per_group[sums].sum().unstack("group", fill_value=0))
    group_sums = group_sums.reindex(index=customers, columns=sum_cols, fill_value=0)
    # nullable integers keep ages exact where a group is missing (NaN would round them)
    group_age = per_group["min_age"].min().astype("Int64").unstack("group")
    group_age = group_age.reindex(index=customers, columns=list(d.groups))

    def col(name: str, group: str) -> pd.Series:
        if group == ALL:
            return everyone[name]
        return group_age[group] if name == "min_age" else group_sums[(name, group)]

    out: dict[str, Any] = {}  # column -> Series indexed by customer
    for g in d.group_names:
        for w in d.count_windows_days:
            out[f"count_{g}_{w}d"] = col(f"n_{w}", g)
        out[f"count_{g}_all"] = col("n_all", g)
    for g in d.group_names:
        out[f"recency_{g}_days"] = col("min_age", g) / DAY_NS
    for g in d.monetary_groups:
        for w in d.monetary_windows_days:
            out[f"amount_{g}_sum_{w}d"] = col(f"amt_{w}", g)
        out[f"amount_{g}_sum_all"] = col("amt_all", g)
        n = col("amt_n", g)
        out[f"amount_{g}_mean_all"] = col("amt_all", g) / n.where(n > 0)
    r, b = d.trend_recent_days, d.trend_baseline_days
    for g in d.group_names:
        recent = col(f"n_{r}", g)
        earlier = col(f"n_{b}", g) - recent
        out[f"trend_{g}"] = np.log((1 + recent) / (1 + earlier * r / (b - r)))

    # -- distinct active days: a day is in a window when its last event is ------------
    day_age = ev.groupby([_CUST, "day"], observed=True)["age"].min().reset_index()
    for w in d.active_days_windows_days:
        day_age[f"in_{w}"] = day_age["age"] <= w * DAY_NS
    active = day_age.groupby(_CUST, observed=True).agg(
        all=("day", "size"), **{f"d{w}": (f"in_{w}", "sum") for w in d.active_days_windows_days}
    )
    for w in d.active_days_windows_days:
        out[f"active_days_{w}d"] = active[f"d{w}"]
    out["active_days_all"] = active["all"]

    # -- funnel depth: the highest level of a type seen (in the window) ---------------
    level_of = {typ: lv for lv, types in d.funnel_levels.items() for typ in types}
    level = by_type[_TYPE].map(level_of).fillna(0)
    out["funnel_depth_all"] = level.groupby(by_type[_CUST], observed=True).max()
    for w in d.funnel_windows_days:
        seen = level.where(by_type[f"n_{w}"] > 0, 0)
        out[f"funnel_depth_{w}d"] = seen.groupby(by_type[_CUST], observed=True).max()

    # -- activity when last seen ----------------------------------------------------
    for g in d.groups:
        out[f"gap_{g}_days"] = (col("min_age", g) - everyone["min_age"]) / DAY_NS
    for g in d.group_names:
        for w in d.last_active_windows_days:
            out[f"last_active_count_{g}_{w}d"] = col(f"last_{w}", g)
    for w in d.last_active_windows_days:
        seen = level.where(by_type[f"last_{w}"] > 0, 0)
        out[f"last_active_funnel_depth_{w}d"] = seen.groupby(by_type[_CUST], observed=True).max()

    if d.last_active_by_event_type:
        per_type = by_type.set_index([_CUST, _TYPE])
        for typ in d.event_types:
            for w in d.last_active_windows_days:
                counts = (
                    per_type[f"last_{w}"].xs(typ, level=_TYPE)
                    if (typ in per_type.index.get_level_values(_TYPE))
                    else pd.Series(dtype=np.int64)
                )
                out[f"last_active_count_type_{typ}_{w}d"] = counts.reindex(customers, fill_value=0)

    out["tenure_days"] = everyone["max_age"] / DAY_NS

    # -- purchase cadence over distinct purchase days ---------------------------------
    bought = ev.loc[
        ev[_TYPE].isin(list(d.groups[d.purchase_group])), [_CUST, "day", "age", "amount"]
    ]
    # One row per purchase day, with the age of its first purchase; the group-by sorts
    # by (customer, day), so diff() within a customer is the gap between purchase days.
    pdays = (
        bought.groupby([_CUST, "day"], observed=True)
        .agg(age=("age", "max"), spend=("amount", "sum"), priced=("amount", "count"))
        .reset_index()
    )
    pdays["gap"] = pdays.groupby(_CUST, observed=True)["day"].diff()
    gaps = pdays.groupby(_CUST, observed=True)["gap"]
    day_ages = pdays.groupby(_CUST, observed=True)["age"]
    # the first purchase, and the first purchase of the latest purchase day
    first, latest_day = day_ages.max(), day_ages.min()
    n_days = pdays.groupby(_CUST, observed=True).size().reindex(customers, fill_value=0)
    two = n_days >= 2
    mean = gaps.mean().reindex(customers).where(two)
    out["purchase_days"] = n_days
    out["purchase_gap_mean_days"] = mean
    out["purchase_gap_std_days"] = gaps.std(ddof=0).reindex(customers).where(two)
    out["purchase_overdue_ratio"] = out[f"recency_{d.purchase_group}_days"] / mean
    out["btyd_frequency"] = (n_days - 1).clip(lower=0)
    out["btyd_recency_days"] = (first - latest_day) / DAY_NS
    out["btyd_age_days"] = first / DAY_NS
    # repeat purchase days: every purchase day but the customer's first (rows are sorted)
    repeat = pdays[pdays.groupby(_CUST, observed=True).cumcount() > 0]
    # a day none of whose purchases has an amount has no spend, rather than a spend of 0
    priced = repeat[repeat["priced"] > 0].groupby(_CUST, observed=True)["spend"]
    out["btyd_mean_spend"] = priced.sum() / priced.size()

    frame = pd.DataFrame({k: out[k].reindex(customers) for k in d.feature_names()})
    frame = frame.astype(np.float64)  # nullable <NA> becomes NaN
    frame.index = pd.Index(frame.index.astype(str), name=CUSTOMER_ID)
    return frame.sort_index()
