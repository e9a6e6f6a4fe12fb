"""The Bayes-optimal ("oracle") prediction for simulated customers.

Given a customer's events strictly before ``as_of`` and the scenario that generated
them, the oracle computes

* the exact filtered posterior of the hidden stage on the last day before ``as_of``
  (a dormant customer counts in the stage it kept), and
* the exact probability of no event at all in ``[as_of, as_of + horizon)``.

It runs the forward algorithm over the customer's days, from the arrival day (revealed
by the first event, the acquisition touch, which is the only event before the
customer's ordinary activity that day) to the day before ``as_of``, on the states
``(stage, active | dormant)`` times the finite activity levels. Per-day likelihoods use
the Poisson counts per event type and the lognormal amounts; the channel and the event
times within a day carry no information about the state and cancel out. Each day's
state vector is normalised, so nothing under- or overflows. The churn probability
propagates the filtered state through the transition model with each state's
probability of a silent day.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    to_canonical_frame,
)
from customer_lifecycle.simulator.clock import DAY_US, parse_midnight, to_us
from customer_lifecycle.simulator.config import Scenario, ScenarioArrays, load_scenario


def posterior(
    events: pd.DataFrame,
    scenario: Scenario | str | Path,
    as_of: object,
    *,
    horizon_days: int = 90,
) -> pd.DataFrame:
    """Exact posterior over stages and churn probability of every customer at ``as_of``.

    Parameters
    ----------
    events
        Event frame with ``customer_id``, ``timestamp``, ``event_type`` and (for
        purchases and refunds) ``amount``; other columns are ignored, and so are events
        at or after ``as_of``. A missing amount is treated as not observed.
    scenario
        The scenario that generated the events (object, shipped name or YAML path).
    as_of
        Snapshot time, at midnight UTC (the model runs in whole days).
    horizon_days
        Length of the churn window ``[as_of, as_of + horizon_days)``.

    Returns
    -------
    DataFrame
        One row per customer with an event before ``as_of``, sorted by customer id:
        ``customer_id``, ``as_of``, ``p_<stage>`` for each stage, ``churn_probability``.
        A customer whose events are impossible under the scenario (for example a first
        event that is no acquisition type) gets NaN.

    Raises
    ------
    ValueError
        On a missing column, an unknown event type, a non-positive amount, an ``as_of``
        not at midnight, or a horizon below one day.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    arrays = sc.arrays()
    t = parse_midnight(as_of)
    frame = to_canonical_frame(events)
    type_cat = frame[EVENT_TYPE].cat
    t_index = {name: i for i, name in enumerate(arrays.event_types)}
    unknown = sorted(str(c) for c in type_cat.categories if str(c) not in t_index)
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; the simulator uses canonical types")
    type_codes = np.asarray([t_index[str(c)] for c in type_cat.categories], dtype=np.int64)
    cust_cat = frame[CUSTOMER_ID].cat
    time_us = pd.DatetimeIndex(frame[TIMESTAMP]).as_unit("us").asi8
    amount = (
        frame[AMOUNT].to_numpy(dtype=float)
        if AMOUNT in frame.columns
        else np.full(len(frame), np.nan)
    )
    present, post, churn, _ = filter_arrays(
        arrays,
        customer=cust_cat.codes.to_numpy(dtype=np.int64),
        time_us=time_us,
        event_type=type_codes[type_cat.codes.to_numpy()],
        amount=amount,
        as_of_us=to_us(t),
        horizon_days=horizon_days,
        n_customers=len(cust_cat.categories),
    )
    ids = cust_cat.categories.astype(str).to_numpy(dtype=object)[present]
    out = pd.DataFrame({"customer_id": ids})
    out["as_of"] = t
    for j, stage in enumerate(arrays.stages):
        out[f"p_{stage}"] = post[:, j]
    out["churn_probability"] = churn
    return out.sort_values("customer_id", ignore_index=True)


def filter_arrays(
    arrays: ScenarioArrays,
    *,
    customer: np.ndarray,
    time_us: np.ndarray,
    event_type: np.ndarray,
    amount: np.ndarray,
    as_of_us: int,
    horizon_days: int,
    n_customers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The oracle on integer-coded events (the engine behind :func:`posterior`).

    Returns ``present`` (``(n_customers,)`` bool: has an event before ``as_of``) and,
    for the present customers in code order, the stage posterior ``(n, S)``, the churn
    probability ``(n,)`` and the log-likelihood of the observations up to constants
    that do not depend on the hidden state ``(n,)``.
    """
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    if as_of_us % DAY_US:
        raise ValueError("as_of is not at midnight UTC; the simulator runs in whole days")
    n_s = len(arrays.stages)
    keep = time_us < as_of_us
    customer, time_us, event_type, amount = (
        customer[keep],
        time_us[keep],
        event_type[keep],
        amount[keep],
    )
    order = np.lexsort((time_us, customer))
    customer, time_us, event_type, amount = (
        customer[order],
        time_us[order],
        event_type[order],
        amount[order],
    )
    day = (time_us - as_of_us) // DAY_US  # -1 is the last day before as_of

    present = np.zeros(n_customers, dtype=bool)
    present[customer] = True
    first = np.ones(customer.size, dtype=bool)
    first[1:] = customer[1:] != customer[:-1]
    n = int(first.sum())

    with np.errstate(divide="ignore"):
        log_initial = np.log(arrays.initial)
        log_arrival = np.log(arrays.arrival_events)
        log_rates = np.log(arrays.rates)
    arrival_day = day[first]
    init_ll = log_initial[None, :] + log_arrival[:, event_type[first]].T
    expo0 = ((arrival_day + 1) * DAY_US - (time_us[first] - as_of_us)) / DAY_US

    # Events after the acquisition touch, summed per (customer, day).
    rest = ~first
    r_cust, r_day, r_type, r_amount = customer[rest], day[rest], event_type[rest], amount[rest]
    ev_ll = log_rates[:, r_type].T.copy()
    for m, code in enumerate(arrays.amount_types):
        hit = np.flatnonzero((r_type == code) & ~np.isnan(r_amount))
        if hit.size == 0:
            continue
        if (r_amount[hit] <= 0).any():
            raise ValueError(f"{arrays.event_types[code]} amounts must be positive")
        sigma = arrays.amount_sigma[m]
        z = (np.log(r_amount[hit])[:, None] - arrays.amount_log_median[m][None, :]) / sigma
        ev_ll[hit] += -np.log(sigma)[None, :] - 0.5 * z * z
    new_group = np.ones(r_cust.size, dtype=bool)
    new_group[1:] = (r_cust[1:] != r_cust[:-1]) | (r_day[1:] != r_day[:-1])
    starts = np.flatnonzero(new_group)
    g_ll = (
        np.add.reduceat(ev_ll, starts, axis=0) if starts.size else np.zeros((0, n_s), dtype=float)
    )
    g_n = np.diff(np.append(starts, r_cust.size)).astype(float)
    g_day = r_day[starts]
    # Customer order: row i of the results is the i-th present customer code.
    rank = np.cumsum(present) - 1
    ptr = np.searchsorted(rank[r_cust[starts]], np.arange(n + 1)).astype(np.int64)

    keep_move = (1.0 - arrays.dormancy)[:, None] * arrays.move
    levels = arrays.levels
    silent = np.exp(-levels[:, None] * arrays.total_rates[None, :])  # (K, S) no event in a day
    quiet = _silence_probability(keep_move, arrays.dormancy, silent, horizon_days)
    with np.errstate(divide="ignore"):
        log_w = np.log(arrays.level_probs)
    post, churn, loglik = _forward(
        arrival_day.astype(np.int64),
        np.ascontiguousarray(init_ll),
        expo0,
        ptr,
        g_day.astype(np.int64),
        np.ascontiguousarray(g_ll),
        g_n,
        np.ascontiguousarray(keep_move),
        arrays.dormancy.astype(float),
        levels.astype(float),
        np.log(levels),
        log_w,
        arrays.total_rates.astype(float),
        silent,
        quiet,
    )
    # Rounding can push a probability a hair past 1.
    return present, post, np.minimum(churn, 1.0), loglik


def _silence_probability(
    keep_move: np.ndarray, dormancy: np.ndarray, silent: np.ndarray, horizon_days: int
) -> np.ndarray:
    """``(K, S)``: probability of no event in the next ``horizon_days`` days from an
    active state (a dormant state is silent for sure)."""
    v = np.ones_like(silent)
    for _ in range(horizon_days):
        v = dormancy[None, :] + (silent * v) @ keep_move.T
    return v


@numba.njit(cache=True, parallel=True)
def _forward(
    arrival_day,
    init_ll,
    expo0,
    ptr,
    g_day,
    g_ll,
    g_n,
    keep_move,
    dormancy,
    levels,
    log_levels,
    log_w,
    lam,
    silent,
    quiet,
):  # pragma: no cover - compiled; covered through filter_arrays
    n = arrival_day.size
    n_k = levels.size
    n_s = lam.size
    post = np.empty((n, n_s))
    churn = np.empty(n)
    loglik = np.empty(n)
    for i in numba.prange(n):
        act = np.empty((n_k, n_s))
        dor = np.zeros((n_k, n_s))
        nxt = np.empty((n_k, n_s))
        e = np.empty((n_k, n_s))
        g = ptr[i]
        g_end = ptr[i + 1]
        a = arrival_day[i]
        # Arrival day: initial stage, acquisition event, then Poisson events after it.
        has = g < g_end and g_day[g] == a
        for k in range(n_k):
            for s in range(n_s):
                v = log_w[k] + init_ll[i, s] - levels[k] * lam[s] * expo0[i]
                if has:
                    v += g_ll[g, s] + g_n[g] * log_levels[k]
                e[k, s] = v
        if has:
            g += 1
        ll = _absorb(e, act)
        for d in range(a + 1, 0):
            if ll == -np.inf:
                break
            for k in range(n_k):
                for s2 in range(n_s):
                    acc = 0.0
                    for s in range(n_s):
                        acc += act[k, s] * keep_move[s, s2]
                    nxt[k, s2] = acc
                for s in range(n_s):
                    dor[k, s] += act[k, s] * dormancy[s]
            if g < g_end and g_day[g] == d:
                # Events seen: the customer is active; dormant paths are ruled out.
                for k in range(n_k):
                    for s in range(n_s):
                        if nxt[k, s] > 0.0:
                            e[k, s] = (
                                np.log(nxt[k, s])
                                + g_ll[g, s]
                                + g_n[g] * log_levels[k]
                                - levels[k] * lam[s]
                            )
                        else:
                            e[k, s] = -np.inf
                        dor[k, s] = 0.0
                g += 1
                ll += _absorb(e, act)
            else:
                total = 0.0
                for k in range(n_k):
                    for s in range(n_s):
                        act[k, s] = nxt[k, s] * silent[k, s]
                        total += act[k, s] + dor[k, s]
                for k in range(n_k):
                    for s in range(n_s):
                        act[k, s] /= total
                        dor[k, s] /= total
                ll += np.log(total)
        loglik[i] = ll
        if ll == -np.inf:
            for s in range(n_s):
                post[i, s] = np.nan
            churn[i] = np.nan
            continue
        c = 0.0
        for s in range(n_s):
            p = 0.0
            for k in range(n_k):
                p += act[k, s] + dor[k, s]
                c += act[k, s] * quiet[k, s] + dor[k, s]
            post[i, s] = p
        churn[i] = c
    return post, churn, loglik


@numba.njit(cache=True)
def _absorb(e, out):  # pragma: no cover - compiled
    """Write ``exp(e)`` normalised to sum 1 into ``out``; return ``log(sum(exp(e)))``."""
    n_k, n_s = e.shape
    shift = -np.inf
    for k in range(n_k):
        for s in range(n_s):
            shift = max(shift, e[k, s])
    if shift == -np.inf:
        for k in range(n_k):
            for s in range(n_s):
                out[k, s] = 0.0
        return -np.inf
    total = 0.0
    for k in range(n_k):
        for s in range(n_s):
            out[k, s] = np.exp(e[k, s] - shift)
            total += out[k, s]
    for k in range(n_k):
        for s in range(n_s):
            out[k, s] /= total
    return shift + np.log(total)
