"""The in-memory feature engine: the definition compiled to NumPy/Numba kernels.

How it works, and why it is fast:

1. Events are laid out per customer with one O(n) counting sort on the customer's
   categorical code (no comparison sort, no string hashing), and each customer's
   events are put in time order (a no-op for logs already sorted by time).
2. One parallel kernel walks each customer's events once per snapshot, stopping at
   the first event at or after ``as_of``, and fills a handful of primitive
   accumulators (counts per group and window, last time per group, amount sums,
   distinct active days, funnel level, purchase days and gaps).
3. Every feature of :class:`features.definition.FeatureDefinition` is then one
   instruction of a small plan (an opcode and its operands per output column,
   compiled once per definition and cached), which a second parallel kernel
   evaluates row by row into a row-major matrix: no temporary array per feature.

:func:`feature_matrix` is the same engine on plain arrays, without pandas, for callers
that already hold codes and integer times (the HTTP API scores one customer in tens
of microseconds through it).

Point in time: an event at ``timestamp >= as_of`` is never read, so adding, removing
or changing such events cannot change any feature, nor the set of customers returned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    parse_as_of,
    parse_timestamps,
)
from customer_lifecycle.features.definition import ALL, DAY_NS, FeatureDefinition, load_definition

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
    columns = definition.feature_names()

    if snapshots is not None:
        snap_codes, snap_asof, index = _snapshot_arrays(snapshots, log.customers)
        # Customers absent from the log share one extra, empty slot.
        snap_codes = np.where(snap_codes < 0, n_cust, snap_codes)
        cust_ptr = np.append(log.cust_ptr, log.cust_ptr[-1])
        values = _run(
            cust_ptr, log, snap_codes, snap_asof, n_cust + 1, definition, progress, n_cust
        )
        return pd.DataFrame(values, columns=columns, index=index, copy=False)

    cutoff = parse_as_of(as_of).as_unit("ns").value
    # Rows are the customers with an event before as_of: their first event (events are
    # time-sorted per customer) is earlier. Chosen up front, so that the feature matrix
    # is written once, without a filtering copy.
    seen = np.diff(log.cust_ptr) > 0
    if len(log.t):
        seen &= log.t[np.minimum(log.cust_ptr[:-1], len(log.t) - 1)] < cutoff
    snap_codes = np.flatnonzero(seen)
    snap_asof = np.full(len(snap_codes), cutoff, dtype=np.int64)
    values = _run(log.cust_ptr, log, snap_codes, snap_asof, n_cust, definition, progress, n_cust)
    ids = pd.Index(log.customers[snap_codes], name=CUSTOMER_ID)
    return pd.DataFrame(values, columns=columns, index=ids, copy=False)


def feature_matrix(
    customer_codes: np.ndarray,
    t_ns: np.ndarray,
    type_codes: np.ndarray,
    amount: np.ndarray,
    *,
    n_customers: int,
    type_names: tuple[str, ...],
    as_of_ns: int,
    definition: FeatureDefinition,
) -> np.ndarray:
    """Features at one ``as_of`` from plain arrays: the engine without pandas.

    Parameters
    ----------
    customer_codes
        Integer customer code of each event, in ``[0, n_customers)``.
    t_ns
        Event times as ``int64`` nanoseconds since the Unix epoch, UTC.
    type_codes
        Index of each event's type in ``type_names``.
    amount
        ``float64`` amount of each event, NaN when there is none.
    n_customers
        Number of customers; row ``c`` of the result is customer code ``c``.
    type_names
        Event-type names the codes refer to (need not all be used).
    as_of_ns
        The point in time, nanoseconds since the epoch, UTC; events at or after it
        are never read.
    definition
        The feature definition.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(n_customers, len(definition.feature_names()))``, row
        major. A customer with no event before ``as_of`` gets the features of an empty
        history (zero counts, NaN recencies), exactly as ``build_features`` gives it for
        a snapshot.
    """
    codes = np.asarray(customer_codes, dtype=np.int64)
    n = codes.shape[0]
    if not (len(t_ns) == len(type_codes) == len(amount) == n):
        raise ValueError("customer_codes, t_ns, type_codes and amount differ in length")
    if n and (codes.min() < 0 or codes.max() >= n_customers):
        raise ValueError(f"customer codes must lie in [0, {n_customers})")
    et = np.asarray(type_codes, dtype=np.int32)
    if n and (et.min() < 0 or et.max() >= len(type_names)):
        raise ValueError(f"event-type codes must lie in [0, {len(type_names)})")
    ptr, ts, ets, amts = _group_by_customer(
        codes,
        n_customers,
        np.asarray(t_ns, dtype=np.int64),
        et,
        np.asarray(amount, dtype=np.float64),
        numba.get_num_threads(),
    )
    _sort_within_customers(ptr, ts, ets, amts)
    log = _EventArrays(np.empty(0, dtype=object), ptr, ts, ets, amts, tuple(type_names))
    snap_codes = np.arange(n_customers, dtype=np.int64)
    snap_asof = np.full(n_customers, as_of_ns, dtype=np.int64)
    return _run(ptr, log, snap_codes, snap_asof, n_customers, definition, None, n_customers)


def _run(
    cust_ptr: np.ndarray,
    log: _EventArrays,
    snap_codes: np.ndarray,
    snap_asof: np.ndarray,
    n_slots: int,
    definition: FeatureDefinition,
    progress: Progress | None,
    n_cust: int,
) -> np.ndarray:
    """Both kernels over every snapshot, chunk by chunk of customers: row-major features.

    Primitives exist for one chunk at a time (a few hundred MiB at most, reused): at a
    million customers, primitives for all rows would be gigabytes of fresh memory, and
    first-touching fresh pages is a large part of the time on virtual machines.
    """
    compiled = _compile(definition, log.type_names)
    spec = compiled.spec
    rows = snap_codes.shape[0]
    if rows < 2 or (np.diff(snap_codes) >= 0).all():
        order = np.arange(rows, dtype=np.int64)  # already in customer order
    else:
        order = np.argsort(snap_codes, kind="stable")
    snap_ptr = np.zeros(n_slots + 1, dtype=np.int64)
    np.cumsum(np.bincount(snap_codes, minlength=n_slots), out=snap_ptr[1:])
    asof_sorted = snap_asof[order]
    bounds = [(lo, min(lo + CHUNK_CUSTOMERS, n_slots)) for lo in range(0, n_slots, CHUNK_CUSTOMERS)]
    chunk_rows = max((snap_ptr[hi] - snap_ptr[lo] for lo, hi in bounds), default=0)
    prim = _Primitives.empty(int(chunk_rows), definition)
    values = np.empty((rows, compiled.op.shape[0]), dtype=np.float64)
    for lo, hi in bounds:
        _accumulate(
            lo,
            hi,
            cust_ptr,
            log.t,
            log.et,
            log.amount,
            snap_ptr,
            asof_sorted,
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
        _derive(  # type: ignore[call-arg]  # numba dispatcher, typed as untyped
            compiled.op,
            compiled.a,
            compiled.b,
            compiled.c,
            compiled.x,
            asof_sorted,
            snap_ptr[lo],
            snap_ptr[hi] - snap_ptr[lo],
            order,
            *prim.arrays(),
            values,
        )
        if progress is not None:
            progress(min(hi, n_cust), n_cust)
    return values


# -- input layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class _EventArrays:
    """Events grouped by customer (CSR) and time-sorted within each customer."""

    customers: np.ndarray  # customer id per code, sorted
    cust_ptr: np.ndarray  # int64[n_customers + 1]
    t: np.ndarray  # int64 ns since the epoch, UTC
    et: np.ndarray  # event-type code (the categorical's integer width)
    amount: np.ndarray  # float64, NaN when absent
    type_names: tuple[str, ...]

    @classmethod
    def from_frame(cls, events: pd.DataFrame, definition: FeatureDefinition) -> _EventArrays:
        missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
        if missing:
            raise ValueError(f"events are missing the required column {missing[0]!r}")
        codes, customers = _customer_codes(events[CUSTOMER_ID])
        etype = _as_categorical(events[EVENT_TYPE], EVENT_TYPE)
        t = _as_ns(events[TIMESTAMP])
        if AMOUNT in events.columns:
            amount = pd.to_numeric(events[AMOUNT], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        else:
            amount = np.full(len(events), np.nan)
        et_codes = etype.codes  # int8 for up to 127 types: kept narrow, not widened
        if len(et_codes) and et_codes.min() < 0:
            raise ValueError("column 'event_type' has missing values")
        ptr, ts, ets, amts = _group_by_customer(
            codes, len(customers), t, et_codes, amount, numba.get_num_threads()
        )
        _sort_within_customers(ptr, ts, ets, amts)
        return cls(customers, ptr, ts, ets, amts, tuple(str(c) for c in etype.categories))


def _customer_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(code per event, id per code) with ids sorted and every code used.

    Output rows follow code order, which must therefore be sorted; and the work is sized
    by the number of codes, so ids without events (a slice of a larger categorical) are
    dropped, by an O(n) remapping rather than pandas' sort-based one.
    """
    cat = _as_categorical(values, CUSTOMER_ID)
    codes = cat.codes  # int32 up to 2**31 customers: kept, not widened (a copy per event)
    if len(codes) and codes.min() < 0:
        raise ValueError("column 'customer_id' has missing values")
    categories = cat.categories
    if not categories.is_monotonic_increasing:
        cat = pd.Categorical(np.asarray(cat).astype(str))
        codes, categories = cat.codes, cat.categories
    used = np.bincount(codes, minlength=len(categories)) > 0
    if not used.all():
        codes = (np.cumsum(used) - 1).astype(codes.dtype)[codes]
        categories = categories[used]
    return codes, np.asarray(categories.astype(str), dtype=object)


def _as_categorical(values: pd.Series, name: str) -> pd.Categorical:
    if isinstance(values.dtype, pd.CategoricalDtype):
        cat = values.array
        assert isinstance(cat, pd.Categorical)
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
def _group_by_customer(codes, n_cust, t, et, amount, threads):  # type: ignore[no-untyped-def]
    """Stable counting sort of events by customer code: O(n), keeps time order.

    Events are cut into blocks; each block counts its customers, the counts give
    each block its own disjoint output positions, and the blocks scatter in parallel.
    """
    n = codes.shape[0]
    # One block per thread: each block has a histogram over all customers, which at a
    # million customers is megabytes per block, so more blocks only add cache misses.
    n_blocks = max(1, min(threads, n // 65_536))
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
    ets = np.empty(n, dtype=et.dtype)
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


# Opcodes of the derive plan: one instruction per output column (see _derive).
_OP_COUNT = 0  # cnt[a, b]
_OP_SINCE = 1  # days from last_t[a] to as_of
_OP_AMOUNT = 2  # msum[a, b]
_OP_AMOUNT_MEAN = 3  # msum[a, -1] / mn[a]
_OP_TREND = 4  # log((1 + cnt[a, b]) / (1 + (cnt[a, c] - cnt[a, b]) * x))
_OP_ACTIVE = 5  # active[a]
_OP_FUNNEL = 6  # funnel[a]
_OP_GAP = 7  # days from last_t[a] to the last event of any kind
_OP_LAST_COUNT = 8  # lcnt[a, b]
_OP_LAST_FUNNEL = 9  # lfun[a]
_OP_LAST_TYPE = 10  # ltyp[a, b]
_OP_TENURE = 11  # days from first_t to as_of
_OP_PURCHASE_DAYS = 12
_OP_GAP_MEAN = 13
_OP_GAP_STD = 14
_OP_OVERDUE = 15  # days since last_t[a] over the mean gap
_OP_REPEAT = 16
_OP_BTYD_RECENCY = 17
_OP_BTYD_AGE = 18
_OP_BTYD_SPEND = 19  # rsum / rdays


@dataclass(frozen=True)
class _Compiled:
    """A definition compiled for one list of event types: lookup tables and the plan."""

    spec: _KernelSpec
    op: np.ndarray  # int64[features]
    a: np.ndarray  # int64[features]: first operand
    b: np.ndarray  # int64[features]: second operand
    c: np.ndarray  # int64[features]: third operand
    x: np.ndarray  # float64[features]: constant


@functools.lru_cache(maxsize=64)
def _compile(d: FeatureDefinition, type_names: tuple[str, ...]) -> _Compiled:
    """The plan lists instructions in exactly the order of ``d.feature_names()``."""
    plan: list[tuple[int, int, int, int, float]] = []

    def emit(op: int, a: int = 0, b: int = 0, c: int = 0, x: float = 0.0) -> None:
        plan.append((op, a, b, c, x))

    win = {w: k for k, w in enumerate(d.count_windows)}
    n_groups = len(d.group_names)
    for g in range(n_groups):
        for w in d.count_windows_days:
            emit(_OP_COUNT, g, win[w])
        emit(_OP_COUNT, g, len(d.count_windows))
    for g in range(n_groups):
        emit(_OP_SINCE, g)
    for m in range(len(d.monetary_groups)):
        for k in range(len(d.monetary_windows_days) + 1):
            emit(_OP_AMOUNT, m, k)
        emit(_OP_AMOUNT_MEAN, m)
    r, base = d.trend_recent_days, d.trend_baseline_days
    for g in range(n_groups):
        emit(_OP_TREND, g, win[r], win[base], r / (base - r))
    for k in range(len(d.active_days_windows_days) + 1):
        emit(_OP_ACTIVE, k)
    emit(_OP_FUNNEL, len(d.funnel_windows_days))
    for k in range(len(d.funnel_windows_days)):
        emit(_OP_FUNNEL, k)
    for g in range(len(d.groups)):
        emit(_OP_GAP, g)
    n_last = len(d.last_active_windows_days)
    for g in range(n_groups):
        for k in range(n_last):
            emit(_OP_LAST_COUNT, g, k)
    for k in range(n_last):
        emit(_OP_LAST_FUNNEL, k)
    if d.last_active_by_event_type:
        for t in range(len(d.event_types)):
            for k in range(n_last):
                emit(_OP_LAST_TYPE, t, k)
    purchase = d.group_names.index(d.purchase_group)
    emit(_OP_TENURE)
    for op in (_OP_PURCHASE_DAYS, _OP_GAP_MEAN, _OP_GAP_STD):
        emit(op)
    emit(_OP_OVERDUE, purchase)
    for op in (_OP_REPEAT, _OP_BTYD_RECENCY, _OP_BTYD_AGE, _OP_BTYD_SPEND):
        emit(op)
    if len(plan) != len(d.feature_names()):  # pragma: no cover - a programming error
        raise AssertionError("the derive plan and feature_names() disagree")
    cols = list(zip(*plan, strict=True))
    return _Compiled(
        spec=_KernelSpec.build(d, type_names),
        op=np.array(cols[0], dtype=np.int64),
        a=np.array(cols[1], dtype=np.int64),
        b=np.array(cols[2], dtype=np.int64),
        c=np.array(cols[3], dtype=np.int64),
        x=np.array(cols[4], dtype=np.float64),
    )


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
    def build(cls, d: FeatureDefinition, type_names: tuple[str, ...]) -> _KernelSpec:
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
    rsum: np.ndarray  # float64[rows]: purchase amounts on repeat purchase days
    rdays: np.ndarray  # int64[rows]: repeat purchase days with an amount
    lcnt: np.ndarray  # int64[rows, groups + all, last-active windows] (buckets, then windows)
    lfun: np.ndarray  # int32[rows, last-active windows] (bucket maxima, then windows)
    ltyp: np.ndarray  # int32[rows, event types, last-active windows] (buckets, then windows)

    @classmethod
    def empty(cls, rows: int, d: FeatureDefinition) -> _Primitives:
        """Uninitialised: the kernel resets each row before filling it."""
        g = len(d.group_names)
        m = len(d.monetary_groups)
        return cls(
            cnt=np.empty((rows, g, len(d.count_windows) + 1), dtype=np.int64),
            last_t=np.empty((rows, g), dtype=np.int64),
            first_t=np.empty(rows, dtype=np.int64),
            msum=np.empty((rows, m, len(d.monetary_windows_days) + 1)),
            mn=np.empty((rows, m), dtype=np.int64),
            active=np.empty((rows, len(d.active_days_windows_days) + 1), dtype=np.int64),
            funnel=np.empty((rows, len(d.funnel_windows_days) + 1), dtype=np.int32),
            pdays=np.empty(rows, dtype=np.int64),
            first_pt=np.empty(rows, dtype=np.int64),
            last_pt=np.empty(rows, dtype=np.int64),
            gsum=np.empty(rows),
            gsq=np.empty(rows),
            rsum=np.empty(rows),
            rdays=np.empty(rows, dtype=np.int64),
            lcnt=np.empty((rows, g, len(d.last_active_windows_days)), dtype=np.int64),
            lfun=np.empty((rows, len(d.last_active_windows_days)), dtype=np.int32),
            ltyp=np.empty(
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
            self.rsum,
            self.rdays,
            self.lcnt,
            self.lfun,
            self.ltyp,
        )


_NEVER_IN_A_WINDOW = np.iinfo(np.int64).max


@numba.njit(cache=True)
def _elapsed_days(later, earlier):  # type: ignore[no-untyped-def]
    """Days from ``earlier`` to ``later`` (nanoseconds, ``later >= earlier``).

    Exact in int64 up to 292 years apart; beyond that int64 would overflow, and the days
    come from floats instead (off by ~0.1 µs).
    """
    if earlier < _oldest_exact(later):
        return (float(later) - float(earlier)) / 86_400_000_000_000
    return (later - earlier) / 86_400_000_000_000


@numba.njit(cache=True)
def _oldest_exact(later):  # type: ignore[no-untyped-def]
    """The earliest time whose distance to ``later`` fits int64 (compared before any
    subtraction: an overflow check after it could be optimised away)."""
    if later >= 0:
        return later - _NEVER_IN_A_WINDOW
    return np.iinfo(np.int64).min


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
    rsum,
    rdays,
    lcnt,
    lfun,
    ltyp,
):
    none = np.iinfo(np.int64).min
    n_c, n_m, n_a, n_f = cwin.shape[0], mwin.shape[0], awin.shape[0], fwin.shape[0]
    n_l = lwin.shape[0]
    g_all = cnt.shape[1] - 1
    base = snap_ptr[lo]
    for c in numba.prange(lo, hi):
        e0, e1 = cust_ptr[c], cust_ptr[c + 1]
        for s in range(snap_ptr[c], snap_ptr[c + 1]):
            as_of = snap_asof[s]
            oldest = _oldest_exact(as_of)
            r = s - base  # the chunk's primitives are reused: start from empty
            cnt[r] = 0
            last_t[r] = none
            first_t[r] = none
            msum[r] = 0.0
            mn[r] = 0
            active[r] = 0
            funnel[r] = 0
            pdays[r] = 0
            first_pt[r] = none
            last_pt[r] = none
            gsum[r] = 0.0
            gsq[r] = 0.0
            rsum[r] = 0.0
            rdays[r] = 0
            lcnt[r] = 0
            lfun[r] = 0
            ltyp[r] = 0
            last_day = np.full(n_a + 1, none, dtype=np.int64)
            prev_pday = none
            pday_has_amount = False
            stop = e1
            if e1 > e0 and t[e0] < as_of:
                first_t[r] = t[e0]
            for i in range(e0, e1):
                ti = t[i]
                if ti >= as_of:
                    stop = i
                    break  # time-sorted: nothing at or after as_of is ever read
                # more than 292 years before as_of: older than any window (and as_of - ti
                # would overflow)
                age = as_of - ti if ti >= oldest else _NEVER_IN_A_WINDOW
                e = et[i]
                day = ti // 86_400_000_000_000
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
                        pday_has_amount = False
                    # Spend of repeat purchase days only (the first day is BG/NBD's
                    # time 0); a day without any amount is not a zero-spend day.
                    if pdays[r] > 1 and not np.isnan(a):
                        rsum[r] += a
                        if not pday_has_amount:
                            rdays[r] += 1
                            pday_has_amount = True
            # activity when last seen: walk back from the last event before as_of
            if stop > e0 and n_l > 0:
                t_last = t[stop - 1]
                oldest_back = _oldest_exact(t_last)
                for i in range(stop - 1, e0 - 1, -1):
                    back = t_last - t[i] if t[i] >= oldest_back else _NEVER_IN_A_WINDOW
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
            # Window buckets -> trailing windows: windows are sorted, so each is a
            # prefix sum (or a running maximum for funnel levels) over the buckets.
            for g in range(cnt.shape[1]):
                for k in range(1, cnt.shape[2]):
                    cnt[r, g, k] += cnt[r, g, k - 1]
                for k in range(1, n_l):
                    lcnt[r, g, k] += lcnt[r, g, k - 1]
            for m in range(msum.shape[1]):
                for k in range(1, msum.shape[2]):
                    msum[r, m, k] += msum[r, m, k - 1]
            for k in range(1, n_l):
                if lfun[r, k - 1] > lfun[r, k]:
                    lfun[r, k] = lfun[r, k - 1]
            for tc in range(ltyp.shape[1]):
                for k in range(1, n_l):
                    ltyp[r, tc, k] += ltyp[r, tc, k - 1]


# -- features from primitives ----------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _derive(  # type: ignore[no-untyped-def]  # noqa: PLR0913
    op,
    a,
    b,
    c,
    x,
    as_of,
    base,
    rows,
    order,
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
    rsum,
    rdays,
    lcnt,
    lfun,
    ltyp,
    out,
):
    """Evaluate the plan of :func:`_compile` for a chunk's rows into ``out[row, feature]``.

    Primitive row ``r`` is snapshot ``base + r`` in customer order, which is output row
    ``order[base + r]``.
    """
    none = np.iinfo(np.int64).min
    nan = np.nan
    g_all = last_t.shape[1] - 1
    for r in numba.prange(rows):
        now = as_of[base + r]
        row = order[base + r]
        n_gaps = pdays[r] - 1
        mean = gsum[r] / n_gaps if n_gaps > 0 else nan
        for j in range(op.shape[0]):
            o, u, w = op[j], a[j], b[j]
            if o == _OP_COUNT:
                v = float(cnt[r, u, w])
            elif o == _OP_SINCE:
                v = nan if last_t[r, u] == none else _elapsed_days(now, last_t[r, u])
            elif o == _OP_AMOUNT:
                v = msum[r, u, w]
            elif o == _OP_AMOUNT_MEAN:
                v = msum[r, u, msum.shape[2] - 1] / mn[r, u] if mn[r, u] > 0 else nan
            elif o == _OP_TREND:
                recent = float(cnt[r, u, w])
                earlier = cnt[r, u, c[j]] - recent
                v = np.log((1.0 + recent) / (1.0 + earlier * x[j]))
            elif o == _OP_ACTIVE:
                v = float(active[r, u])
            elif o == _OP_FUNNEL:
                v = float(funnel[r, u])
            elif o == _OP_GAP:
                v = nan if last_t[r, u] == none else _elapsed_days(last_t[r, g_all], last_t[r, u])
            elif o == _OP_LAST_COUNT:
                v = float(lcnt[r, u, w])
            elif o == _OP_LAST_FUNNEL:
                v = float(lfun[r, u])
            elif o == _OP_LAST_TYPE:
                v = float(ltyp[r, u, w])
            elif o == _OP_TENURE:
                v = nan if first_t[r] == none else _elapsed_days(now, first_t[r])
            elif o == _OP_PURCHASE_DAYS:
                v = float(pdays[r])
            elif o == _OP_GAP_MEAN:
                v = mean
            elif o == _OP_GAP_STD:
                v = nan
                if n_gaps > 0:
                    var = gsq[r] / n_gaps - mean * mean
                    v = np.sqrt(var) if var > 0.0 else 0.0
            elif o == _OP_OVERDUE:
                v = nan
                if n_gaps > 0 and mean > 0 and last_t[r, u] != none:
                    v = _elapsed_days(now, last_t[r, u]) / mean
            elif o == _OP_REPEAT:
                v = float(max(pdays[r] - 1, 0))
            elif o == _OP_BTYD_RECENCY:
                v = nan if first_pt[r] == none else _elapsed_days(last_pt[r], first_pt[r])
            elif o == _OP_BTYD_AGE:
                v = nan if first_pt[r] == none else _elapsed_days(now, first_pt[r])
            else:  # _OP_BTYD_SPEND
                v = rsum[r] / rdays[r] if rdays[r] > 0 else nan
            out[row, j] = v


__all__ = ["ALL", "CHUNK_CUSTOMERS", "build_features", "feature_matrix"]
