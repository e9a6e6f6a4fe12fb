"""The in-memory feature engine: the definition compiled to NumPy/Numba kernels.

How it works, and why it is fast:

1. Events are laid out per customer with one O(n) counting sort on the customer's
   categorical code (no comparison sort, no string hashing), and each customer's
   events are put in time order (a no-op for logs already sorted by time).
2. One parallel kernel walks each customer's events once per snapshot, stopping at
   the first event at or after ``as_of``, and fills a handful of primitive
   accumulators (counts per group and window, last time per group, amount sums,
   distinct active days, funnel level, purchase days and gaps).
3. Every feature of :class:`features.definition.FeatureDefinition` is then a
   vectorised NumPy expression over those primitives.

Point in time: an event at ``timestamp >= as_of`` is never read, so adding, removing
or changing such events cannot change any feature, nor the set of customers returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    parse_as_of,
    parse_timestamps,
)
from features.definition import ALL, DAY_NS, FeatureDefinition, load_definition

_NONE = np.iinfo(np.int64).min
#: Customers per kernel call; progress is reported after each chunk.
CHUNK_CUSTOMERS = 65_536

Progress = Callable[[int, int], None]


def build_features(
    events: pd.DataFrame,
    *,
    as_of: object = None,
    snapshots: pd.DataFrame | None = None,
    definition: FeatureDefinition | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Build point-in-time features for every customer, or for given snapshots.

    Parameters
    ----------
    events
        Event frame with at least ``customer_id``, ``timestamp`` and ``event_type``
        (``amount`` optional). The canonical frame of :func:`features.events.load_events`
        is fastest; other dtypes are converted. The frame is not modified.
    as_of
        One point in time (ISO 8601 string or timestamp; naive means UTC). Returns one
        row per customer with at least one event strictly before it, indexed by
        ``customer_id`` in sorted order.
    snapshots
        Instead of ``as_of``: a frame with ``customer_id`` and ``as_of`` columns, one row
        per training example (several per customer allowed). Returns one row per
        snapshot, in the given order, indexed by ``(customer_id, as_of)``. A customer
        with no events before its ``as_of`` gets zero counts and NaN recencies.
    definition
        Feature definition; the shipped default when ``None``.
    progress
        Called as ``progress(done, total)`` in customers after each chunk.

    Returns
    -------
    pandas.DataFrame
        ``float64`` columns named by ``definition.feature_names()``.

    Raises
    ------
    ValueError
        When both or neither of ``as_of`` and ``snapshots`` are given, a required
        column is missing, or a time cannot be parsed.
    """
    if (as_of is None) == (snapshots is None):
        raise ValueError("give exactly one of as_of (one time) or snapshots (a frame)")
    definition = definition or load_definition()
    log = _EventArrays.from_frame(events, definition)
    n_cust = log.customers.shape[0]

    if snapshots is not None:
        snap_codes, snap_asof, index = _snapshot_arrays(snapshots, log.customers)
        unknown = snap_codes < 0
        # Customers absent from the log share one extra, empty slot.
        snap_codes = np.where(unknown, n_cust, snap_codes)
        cust_ptr = np.append(log.cust_ptr, log.cust_ptr[-1])
        n_slots = n_cust + 1
    else:
        cutoff = parse_as_of(as_of).as_unit("ns")
        snap_codes = np.arange(n_cust, dtype=np.int64)
        snap_asof = np.full(n_cust, cutoff.value, dtype=np.int64)
        cust_ptr = log.cust_ptr
        n_slots = n_cust

    order = np.argsort(snap_codes, kind="stable")
    snap_ptr = np.zeros(n_slots + 1, dtype=np.int64)
    np.cumsum(np.bincount(snap_codes, minlength=n_slots), out=snap_ptr[1:])
    prim = _Primitives.empty(len(snap_codes), definition)
    spec = _KernelSpec.build(definition, log.type_names)
    for lo in range(0, n_slots, CHUNK_CUSTOMERS):
        hi = min(lo + CHUNK_CUSTOMERS, n_slots)
        _accumulate(
            lo,
            hi,
            cust_ptr,
            log.t,
            log.et,
            log.amount,
            snap_ptr,
            snap_asof[order],
            order,
            spec.group_ptr,
            spec.group_idx,
            spec.money_ptr,
            spec.money_idx,
            spec.level,
            spec.is_purchase,
            spec.count_windows,
            spec.money_windows,
            spec.active_windows,
            spec.funnel_windows,
            spec.last_active_windows,
            spec.type_column,
            *prim.arrays(),
        )
        if progress is not None:
            progress(min(hi, n_cust), n_cust)

    # Window buckets -> trailing windows (windows are sorted, so each is a prefix sum).
    np.cumsum(prim.cnt, axis=2, out=prim.cnt)
    np.cumsum(prim.msum, axis=2, out=prim.msum)
    np.cumsum(prim.lcnt, axis=2, out=prim.lcnt)
    np.maximum.accumulate(prim.lfun, axis=1, out=prim.lfun)
    np.cumsum(prim.ltyp, axis=2, out=prim.ltyp)
    values = _derive(prim, snap_asof, definition)  # shape (features, rows)
    columns = definition.feature_names()
    if snapshots is not None:
        return pd.DataFrame(values.T, columns=columns, index=index, copy=False)
    keep = prim.cnt[:, -1, -1] > 0
    if not keep.all():
        values = values[:, keep]
    ids = pd.Index(log.customers[keep], name=CUSTOMER_ID)
    return pd.DataFrame(values.T, columns=columns, index=ids, copy=False)


# -- input layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class _EventArrays:
    """Events grouped by customer (CSR) and time-sorted within each customer."""

    customers: np.ndarray  # customer id per code, sorted
    cust_ptr: np.ndarray  # int64[n_customers + 1]
    t: np.ndarray  # int64 ns since the epoch, UTC
    et: np.ndarray  # int32 event-type code
    amount: np.ndarray  # float64, NaN when absent
    type_names: list[str]

    @classmethod
    def from_frame(cls, events: pd.DataFrame, definition: FeatureDefinition) -> _EventArrays:
        missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
        if missing:
            raise ValueError(f"events are missing the required column {missing[0]!r}")
        cust = _as_categorical(events[CUSTOMER_ID], CUSTOMER_ID)
        etype = _as_categorical(events[EVENT_TYPE], EVENT_TYPE)
        t = _as_ns(events[TIMESTAMP])
        if AMOUNT in events.columns:
            amount = pd.to_numeric(events[AMOUNT], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        else:
            amount = np.full(len(events), np.nan)
        codes = cust.codes.astype(np.int64, copy=False)
        n_cust = len(cust.categories)
        if len(codes) and codes.min() < 0:
            raise ValueError("column 'customer_id' has missing values")
        et_codes = etype.codes.astype(np.int32, copy=False)
        if len(et_codes) and et_codes.min() < 0:
            raise ValueError("column 'event_type' has missing values")
        ptr, ts, ets, amts = _group_by_customer(codes, n_cust, t, et_codes, amount)
        _sort_within_customers(ptr, ts, ets, amts)
        customers = np.asarray(cust.categories.astype(str), dtype=object)
        return cls(customers, ptr, ts, ets, amts, [str(c) for c in etype.categories])


def _as_categorical(values: pd.Series, name: str) -> pd.Categorical:
    if isinstance(values.dtype, pd.CategoricalDtype):
        cat = values.array
        assert isinstance(cat, pd.Categorical)
        if name == CUSTOMER_ID:
            # Output rows follow category order, which must therefore be sorted; and the
            # work is sized by the number of categories, so unused ones are dropped.
            if not cat.categories.is_monotonic_increasing:
                cat = pd.Categorical(np.asarray(cat).astype(str))
            elif len(cat.codes) and cat.codes.min() >= 0:
                used = np.bincount(cat.codes, minlength=len(cat.categories))
                if not used.all():
                    cat = cat.remove_unused_categories()
        return cat
    if values.isna().any():
        raise ValueError(f"column {name!r} has missing values")
    return pd.Categorical(values.astype(str).to_numpy(dtype=object))


def _as_ns(values: pd.Series) -> np.ndarray:
    if not isinstance(values.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(
        values.dtype
    ):
        values = parse_timestamps(values)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC")
    if values.isna().any():
        raise ValueError("column 'timestamp' has missing or unparseable values")
    return values.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)


def _snapshot_arrays(
    snapshots: pd.DataFrame, customers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, pd.MultiIndex]:
    for col in (CUSTOMER_ID, "as_of"):
        if col not in snapshots.columns:
            raise ValueError(f"snapshots are missing the column {col!r}")
    ids = snapshots[CUSTOMER_ID].astype(str)
    when = parse_timestamps(snapshots["as_of"])
    if when.isna().any():
        row = int(np.flatnonzero(when.isna().to_numpy())[0])
        raise ValueError(f"snapshots row {row}: as_of is not an ISO 8601 time")
    codes = pd.Index(customers).get_indexer(ids.to_numpy()).astype(np.int64)  # -1: unknown
    asof_ns = when.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)
    index = pd.MultiIndex.from_arrays(
        [ids.to_numpy(), when.to_numpy()], names=[CUSTOMER_ID, "as_of"]
    )
    return codes, asof_ns, index


@numba.njit(parallel=True, cache=True)
def _group_by_customer(codes, n_cust, t, et, amount):  # type: ignore[no-untyped-def]
    """Stable counting sort of events by customer code: O(n), keeps time order.

    Events are cut into blocks; each block counts its customers, the counts give
    each block its own disjoint output positions, and the blocks scatter in parallel.
    """
    n = codes.shape[0]
    n_blocks = max(1, min(16, n // 65_536))
    size = (n + n_blocks - 1) // n_blocks
    hist = np.zeros((n_blocks, n_cust), dtype=np.int64)
    for b in numba.prange(n_blocks):
        for i in range(b * size, min(n, (b + 1) * size)):
            hist[b, codes[i]] += 1
    ptr = np.zeros(n_cust + 1, dtype=np.int64)
    for c in range(n_cust):
        run = ptr[c]
        for b in range(n_blocks):
            h = hist[b, c]
            hist[b, c] = run  # becomes block b's next position for customer c
            run += h
        ptr[c + 1] = run
    ts = np.empty(n, dtype=np.int64)
    ets = np.empty(n, dtype=np.int32)
    amts = np.empty(n, dtype=np.float64)
    for b in numba.prange(n_blocks):
        for i in range(b * size, min(n, (b + 1) * size)):
            c = codes[i]
            p = hist[b, c]
            hist[b, c] = p + 1
            ts[p] = t[i]
            ets[p] = et[i]
            amts[p] = amount[i]
    return ptr, ts, ets, amts


@numba.njit(parallel=True, cache=True)
def _sort_within_customers(ptr, ts, ets, amts):  # type: ignore[no-untyped-def]
    for c in numba.prange(ptr.shape[0] - 1):
        lo, hi = ptr[c], ptr[c + 1]
        ordered = True
        for i in range(lo + 1, hi):
            if ts[i] < ts[i - 1]:
                ordered = False
                break
        if not ordered:
            idx = np.argsort(ts[lo:hi], kind="mergesort") + lo
            ts[lo:hi] = ts[idx]
            ets[lo:hi] = ets[idx]
            amts[lo:hi] = amts[idx]


# -- the kernel ------------------------------------------------------------------------


@dataclass(frozen=True)
class _KernelSpec:
    """The definition as lookup tables indexed by event-type code, and windows in ns."""

    group_ptr: np.ndarray
    group_idx: np.ndarray
    money_ptr: np.ndarray
    money_idx: np.ndarray
    level: np.ndarray
    is_purchase: np.ndarray
    count_windows: np.ndarray
    money_windows: np.ndarray
    active_windows: np.ndarray
    funnel_windows: np.ndarray
    last_active_windows: np.ndarray
    type_column: np.ndarray  # column of each log event type among definition.event_types, or -1

    @classmethod
    def build(cls, d: FeatureDefinition, type_names: list[str]) -> _KernelSpec:
        groups = list(d.groups)
        level_of = {t: lv for lv, ts in d.funnel_levels.items() for t in ts}
        purchase_types = set(d.groups[d.purchase_group])
        group_lists, money_lists = [], []
        for name in type_names:
            in_groups = [i for i, g in enumerate(groups) if name in d.groups[g]]
            group_lists.append(in_groups)
            money_lists.append([m for m, g in enumerate(d.monetary_groups) if name in d.groups[g]])
        g_ptr, g_idx = _csr(group_lists)
        m_ptr, m_idx = _csr(money_lists)
        return cls(
            group_ptr=g_ptr,
            group_idx=g_idx,
            money_ptr=m_ptr,
            money_idx=m_idx,
            level=np.array([level_of.get(n, 0) for n in type_names], dtype=np.int32),
            is_purchase=np.array([n in purchase_types for n in type_names], dtype=np.bool_),
            count_windows=_ns(d.count_windows),
            money_windows=_ns(d.monetary_windows_days),
            active_windows=_ns(d.active_days_windows_days),
            funnel_windows=_ns(d.funnel_windows_days),
            last_active_windows=_ns(d.last_active_windows_days),
            type_column=np.array(
                [d.event_types.index(n) if n in d.event_types else -1 for n in type_names]
                if d.last_active_by_event_type
                else [-1] * len(type_names),
                dtype=np.int64,
            ),
        )


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(lists) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(x) for x in lists])
    idx = np.array([i for x in lists for i in x], dtype=np.int64)
    return ptr, idx


def _ns(days: tuple[int, ...]) -> np.ndarray:
    return np.array(days, dtype=np.int64) * DAY_NS


@dataclass(frozen=True)
class _Primitives:
    """Per-row accumulators the kernel fills. Index -1 of a window axis is all history."""

    cnt: np.ndarray  # int64[rows, groups + all, count windows + all] (buckets, then windows)
    last_t: np.ndarray  # int64[rows, groups + all]
    first_t: np.ndarray  # int64[rows]
    msum: np.ndarray  # float64[rows, monetary groups, monetary windows + all] (likewise)
    mn: np.ndarray  # int64[rows, monetary groups]: events with an amount
    active: np.ndarray  # int64[rows, active windows + all]
    funnel: np.ndarray  # int32[rows, funnel windows + all]
    pdays: np.ndarray  # int64[rows]
    first_pt: np.ndarray  # int64[rows]
    last_pt: np.ndarray  # int64[rows]: first purchase time on the latest purchase day
    gsum: np.ndarray  # float64[rows]: sum of gaps between purchase days
    gsq: np.ndarray  # float64[rows]: sum of squared gaps
    lcnt: np.ndarray  # int64[rows, groups + all, last-active windows] (buckets, then windows)
    lfun: np.ndarray  # int32[rows, last-active windows] (bucket maxima, then windows)
    ltyp: np.ndarray  # int32[rows, event types, last-active windows] (buckets, then windows)

    @classmethod
    def empty(cls, rows: int, d: FeatureDefinition) -> _Primitives:
        g = len(d.group_names)
        m = len(d.monetary_groups)
        return cls(
            cnt=np.zeros((rows, g, len(d.count_windows) + 1), dtype=np.int64),
            last_t=np.full((rows, g), _NONE, dtype=np.int64),
            first_t=np.full(rows, _NONE, dtype=np.int64),
            msum=np.zeros((rows, m, len(d.monetary_windows_days) + 1)),
            mn=np.zeros((rows, m), dtype=np.int64),
            active=np.zeros((rows, len(d.active_days_windows_days) + 1), dtype=np.int64),
            funnel=np.zeros((rows, len(d.funnel_windows_days) + 1), dtype=np.int32),
            pdays=np.zeros(rows, dtype=np.int64),
            first_pt=np.full(rows, _NONE, dtype=np.int64),
            last_pt=np.full(rows, _NONE, dtype=np.int64),
            gsum=np.zeros(rows),
            gsq=np.zeros(rows),
            lcnt=np.zeros((rows, g, len(d.last_active_windows_days)), dtype=np.int64),
            lfun=np.zeros((rows, len(d.last_active_windows_days)), dtype=np.int32),
            ltyp=np.zeros(
                (
                    rows,
                    len(d.event_types) if d.last_active_by_event_type else 0,
                    len(d.last_active_windows_days),
                ),
                dtype=np.int32,
            ),
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.cnt,
            self.last_t,
            self.first_t,
            self.msum,
            self.mn,
            self.active,
            self.funnel,
            self.pdays,
            self.first_pt,
            self.last_pt,
            self.gsum,
            self.gsq,
            self.lcnt,
            self.lfun,
            self.ltyp,
        )


@numba.njit(parallel=True, cache=True)
def _accumulate(  # type: ignore[no-untyped-def]  # noqa: PLR0913
    lo,
    hi,
    cust_ptr,
    t,
    et,
    amount,
    snap_ptr,
    snap_asof,
    snap_row,
    group_ptr,
    group_idx,
    money_ptr,
    money_idx,
    level,
    is_purchase,
    cwin,
    mwin,
    awin,
    fwin,
    lwin,
    type_col,
    cnt,
    last_t,
    first_t,
    msum,
    mn,
    active,
    funnel,
    pdays,
    first_pt,
    last_pt,
    gsum,
    gsq,
    lcnt,
    lfun,
    ltyp,
):
    none = np.iinfo(np.int64).min
    n_c, n_m, n_a, n_f = cwin.shape[0], mwin.shape[0], awin.shape[0], fwin.shape[0]
    n_l = lwin.shape[0]
    g_all = cnt.shape[1] - 1
    for c in numba.prange(lo, hi):
        e0, e1 = cust_ptr[c], cust_ptr[c + 1]
        for s in range(snap_ptr[c], snap_ptr[c + 1]):
            as_of = snap_asof[s]
            r = snap_row[s]
            last_day = np.full(n_a + 1, none, dtype=np.int64)
            prev_pday = none
            stop = e1
            for i in range(e0, e1):
                ti = t[i]
                if ti >= as_of:
                    stop = i
                    break  # time-sorted: nothing at or after as_of is ever read
                age = as_of - ti
                e = et[i]
                day = ti // 86_400_000_000_000
                if first_t[r] == none:
                    first_t[r] = ti
                # counts and last time: the implicit "all" group, then the event's groups
                # Counts and sums go to the bucket of the narrowest window holding the
                # event (n_c: none); the caller's cumulative sum turns buckets into windows.
                kc = 0
                while kc < n_c and age > cwin[kc]:
                    kc += 1
                cnt[r, g_all, kc] += 1
                last_t[r, g_all] = ti
                for j in range(group_ptr[e], group_ptr[e + 1]):
                    g = group_idx[j]
                    cnt[r, g, kc] += 1
                    last_t[r, g] = ti
                a = amount[i]
                if not np.isnan(a):
                    km = 0
                    while km < n_m and age > mwin[km]:
                        km += 1
                    for j in range(money_ptr[e], money_ptr[e + 1]):
                        m = money_idx[j]
                        msum[r, m, km] += a
                        mn[r, m] += 1
                # distinct days: events are time-sorted, so a new day is a change of day
                if day != last_day[n_a]:
                    active[r, n_a] += 1
                    last_day[n_a] = day
                for k in range(n_a):
                    if age <= awin[k] and day != last_day[k]:
                        active[r, k] += 1
                        last_day[k] = day
                lv = level[e]
                if lv > funnel[r, n_f]:
                    funnel[r, n_f] = lv
                for k in range(n_f):
                    if age <= fwin[k] and lv > funnel[r, k]:
                        funnel[r, k] = lv
                if is_purchase[e]:
                    if first_pt[r] == none:
                        first_pt[r] = ti
                    if day != prev_pday:
                        last_pt[r] = ti  # first purchase of the latest purchase day
                        if prev_pday != none:
                            gap = float(day - prev_pday)
                            gsum[r] += gap
                            gsq[r] += gap * gap
                        pdays[r] += 1
                        prev_pday = day
            # activity when last seen: walk back from the last event before as_of
            if stop > e0 and n_l > 0:
                t_last = t[stop - 1]
                for i in range(stop - 1, e0 - 1, -1):
                    back = t_last - t[i]
                    if back > lwin[n_l - 1]:
                        break
                    kl = 0
                    while back > lwin[kl]:
                        kl += 1
                    e = et[i]
                    lcnt[r, g_all, kl] += 1
                    for j in range(group_ptr[e], group_ptr[e + 1]):
                        lcnt[r, group_idx[j], kl] += 1
                    if level[e] > lfun[r, kl]:
                        lfun[r, kl] = level[e]
                    tc = type_col[e]
                    if tc >= 0:
                        ltyp[r, tc, kl] += 1


# -- features from primitives ----------------------------------------------------------


def _derive(p: _Primitives, as_of: np.ndarray, d: FeatureDefinition) -> np.ndarray:
    """Every feature of the definition as a NumPy expression, in ``feature_names`` order."""
    rows = as_of.shape[0]
    cols: list[np.ndarray] = []
    win = {w: k for k, w in enumerate(d.count_windows)}
    groups = d.group_names
    for gi, _ in enumerate(groups):
        cols += [p.cnt[:, gi, win[w]] for w in d.count_windows_days]
        cols.append(p.cnt[:, gi, -1])
    for gi, _ in enumerate(groups):
        cols.append(_days_since(p.last_t[:, gi], as_of))
    for mi, _ in enumerate(d.monetary_groups):
        cols += [p.msum[:, mi, k] for k in range(len(d.monetary_windows_days))]
        cols.append(p.msum[:, mi, -1])
        with np.errstate(invalid="ignore", divide="ignore"):
            cols.append(np.where(p.mn[:, mi] > 0, p.msum[:, mi, -1] / p.mn[:, mi], np.nan))
    r, b = d.trend_recent_days, d.trend_baseline_days
    for gi, _ in enumerate(groups):
        recent = p.cnt[:, gi, win[r]].astype(np.float64)
        earlier = p.cnt[:, gi, win[b]] - recent
        cols.append(np.log((1.0 + recent) / (1.0 + earlier * (r / (b - r)))))
    cols += [p.active[:, k] for k in range(p.active.shape[1])]
    cols.append(p.funnel[:, -1])
    cols += [p.funnel[:, k] for k in range(len(d.funnel_windows_days))]
    last_all = p.last_t[:, -1]
    for gi, _ in enumerate(d.groups):
        seen = p.last_t[:, gi] != _NONE
        cols.append(np.where(seen, (last_all - p.last_t[:, gi]) / DAY_NS, np.nan))
    for gi, _ in enumerate(groups):
        cols += [p.lcnt[:, gi, k] for k in range(len(d.last_active_windows_days))]
    cols += [p.lfun[:, k] for k in range(len(d.last_active_windows_days))]
    for ti in range(p.ltyp.shape[1]):
        cols += [p.ltyp[:, ti, k] for k in range(len(d.last_active_windows_days))]
    cols.append(_days_since(p.first_t, as_of))

    n_gaps = p.pdays - 1
    has_gap = n_gaps > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has_gap, p.gsum / n_gaps, np.nan)
        var = np.where(has_gap, p.gsq / n_gaps - mean * mean, np.nan)
    std = np.sqrt(np.clip(var, 0.0, None))
    purchase_g = groups.index(d.purchase_group)
    since_purchase = _days_since(p.last_t[:, purchase_g], as_of)
    bought = p.first_pt != _NONE
    with np.errstate(invalid="ignore", divide="ignore"):
        overdue = np.where(has_gap & (mean > 0), since_purchase / mean, np.nan)
    cols += [
        p.pdays,
        mean,
        std,
        overdue,
        np.maximum(p.pdays - 1, 0),
        np.where(bought, (p.last_pt - p.first_pt) / DAY_NS, np.nan),
        _days_since(p.first_pt, as_of),
    ]
    # Feature-major, so each column is one contiguous write and the frame built on
    # its transpose needs no copy.
    out = np.empty((len(cols), rows), dtype=np.float64)
    for j, col in enumerate(cols):
        out[j] = col
    return out


def _days_since(t: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    return np.where(t != _NONE, (as_of - t) / DAY_NS, np.nan)


__all__ = ["ALL", "CHUNK_CUSTOMERS", "build_features"]
