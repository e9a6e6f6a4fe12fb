"""Latent-stage features: a hidden Markov model of each customer's daily event counts.

Hand-made aggregates (recency, windowed counts) cannot say which hidden regime a
customer's sequence has been in lately; a hidden Markov model of the relationship
(Netzer, Lattin & Srinivasan, Marketing Science 2008) can. This module fits one by EM
on the event log itself (unlabelled customers included) and turns every customer's
history into the filtered posterior of the latent state on the last day before
``as_of``: features the gradient-boosted heads can use.

The model, in whole days counted back from ``as_of`` (day ``d`` covers
``[as_of - (d + 1) days, as_of - d days)``, so exactly the events strictly before
``as_of`` are read):

* K latent states with a full daily transition matrix ``A`` and an initial distribution
  on the day of the customer's first event (the sequence is conditioned on arrival and
  runs to day 0);
* per state, a categorical distribution of the first event's type (how customers
  arrive says where they start), and Poisson daily counts per event type over a
  vocabulary learned at fit (the most frequent types, the rest pooled into ``other``);
  on the arrival day only the time after the first event is exposed;
* a per-customer activity multiplier on a fixed log-spaced grid with learned mixing
  weights, multiplying every rate: customers differ hugely in activity, and without it
  intensity is mistaken for stage.

:class:`LatentStateFeatures` is the estimator (``fit`` / ``transform``, scikit-learn
style); :class:`LatentParams` the frozen, JSON-serialisable parameters (``from_dict``
validates files from untrusted artifacts); :class:`LatentFilter` the fast forward
filter on plain arrays for the HTTP API, where runs of silent days cost one
precomputed matrix product each; :func:`forecast_states` the state distribution a
horizon ahead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    CUSTOMER_ID,
    EVENT_TYPE,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    parse_as_of,
)
from customer_lifecycle.features.definition import DAY_NS, FeatureDefinition
from customer_lifecycle.features.engine import (
    _as_categorical,
    _as_ns,
    _customer_codes,
    _group_by_customer,
    _snapshot_arrays,
    _sort_within_customers,
    build_features,
)

PARAMS_FORMAT = "customer_lifecycle.latent/1"
OTHER = "other"
#: The default activity grid: log-spaced multipliers of every rate, a factor of 64 from
#: end to end. Customers' activity is heavy-tailed: on a simulated scenario with
#: log-normal activity (sigma 1.2) this grid took the stage head from 0.951 to 0.979 of
#: the oracle and the churn gap from 0.013 to 0.0065, against 0.25 to 4.
DEFAULT_ACTIVITY_LEVELS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Bounds on a parameters file, so that a hostile one cannot make the filter's
#: precomputed tables (levels x gaps x states x states) huge.
MAX_STATES = 32
MAX_LEVELS = 16
MAX_EVENT_TYPES = 256
#: Silent runs up to this many days use one precomputed matrix; longer runs are cut by
#: binary powers first.
_TABLE_DAYS = 64
_BINARY_POWERS = 32  # 2**31 days covers every int64-nanosecond history
_RECENT_DAYS = 30  # window of the initial rates
#: The filter reads an event at most this long before ``as_of`` (2**62 ns, about 146
#: years) as that old: ``as_of - t`` of two extreme int64 times overflows, and the
#: day numbers index the silent-run tables.
_MAX_AGE_NS = 2**62
_MIN_NS = -(2**63)
_TINY = 1e-300
#: P(label | state) for a state of another stage than the label's (see ``_anchors``)
_LABEL_NOISE = 1e-6


# -- model features ----------------------------------------------------------------------


def model_features(
    events: pd.DataFrame,
    *,
    definition: FeatureDefinition,
    latent: LatentFilter | None,
    as_of: object = None,
    snapshots: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The features a model scores: the definition's, then the latent columns.

    Parameters
    ----------
    events
        Event frame, as for :func:`features.engine.build_features`.
    definition
        The feature definition.
    latent
        The latent filter; ``None`` gives exactly ``build_features``' frame.
    as_of, snapshots
        Exactly one, as for :func:`features.engine.build_features`.

    Returns
    -------
    pandas.DataFrame
        ``build_features``' frame (same index, same row order) with
        ``latent.feature_names`` appended; latent values are NaN for a snapshot whose
        customer has no event before its ``as_of``.
    """
    feats = build_features(events, as_of=as_of, snapshots=snapshots, definition=definition)
    if latent is None:
        return feats
    # a fitted estimator around the caller's filter: building another would redo its tables
    est = LatentStateFeatures(n_states=latent.params.n_states, horizon_days=latent.horizon_days)
    est.params_ = latent.params
    est.filter_ = latent
    lat = est.transform(events, as_of=as_of, snapshots=snapshots)
    clash = [c for c in lat.columns if c in feats.columns]
    if clash:
        raise ValueError(f"the feature definition already has a column named {clash[0]!r}")
    # Both frames follow the same rows (sorted customers, or the snapshots in order);
    # the index is compared rather than trusted.
    values = (
        lat.to_numpy() if lat.index.equals(feats.index) else lat.reindex(feats.index).to_numpy()
    )
    extra = pd.DataFrame(values, columns=lat.columns, index=feats.index, copy=False)
    return pd.concat([feats, extra], axis=1)


# -- parameters --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LatentParams:
    """The fitted model: frozen, JSON-serialisable through :meth:`to_dict`.

    Attributes
    ----------
    event_types
        The vocabulary; rate column ``len(event_types)`` is ``other`` (every other type).
    state_names
        One name per latent state (e.g. ``retention_active``); informative only.
    initial
        ``(K,)`` state distribution on the arrival day.
    transitions
        ``(K, K)`` daily transition matrix, rows sum to 1.
    first_event
        ``(K, V + 1)`` distribution of the first event's type given the arrival state.
    rates
        ``(K, V + 1)`` expected events per day at activity 1, by type.
    activity_levels
        ``(L,)`` positive multipliers of every rate.
    activity_weights
        ``(L,)`` distribution of a customer's activity level.
    quiet_states
        Indices of the states initialised as quiet (near-silent); may be empty.
    """

    event_types: tuple[str, ...]
    state_names: tuple[str, ...]
    initial: np.ndarray
    transitions: np.ndarray
    first_event: np.ndarray
    rates: np.ndarray
    activity_levels: np.ndarray
    activity_weights: np.ndarray
    quiet_states: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("initial", "transitions", "first_event", "rates"):
            arr = np.array(getattr(self, name), dtype=np.float64)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        for name in ("activity_levels", "activity_weights"):
            arr = np.array(getattr(self, name), dtype=np.float64).reshape(-1)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        _check(self)

    @property
    def n_states(self) -> int:
        """Number of latent states K."""
        return int(self.transitions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; :meth:`from_dict` reads it back."""
        return {
            "format": PARAMS_FORMAT,
            "event_types": list(self.event_types),
            "state_names": list(self.state_names),
            "initial": self.initial.tolist(),
            "transitions": self.transitions.tolist(),
            "first_event": self.first_event.tolist(),
            "rates": self.rates.tolist(),
            "activity_levels": self.activity_levels.tolist(),
            "activity_weights": self.activity_weights.tolist(),
            "quiet_states": list(self.quiet_states),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentParams:
        """Parameters from :meth:`to_dict` data, validated.

        Raises
        ------
        ValueError
            One line naming the first problem: unknown format, missing or non-numeric
            field, inconsistent shapes, a NaN or negative value, a distribution or
            transition row that does not sum to 1 (within 1e-6), or sizes beyond the
            module's bounds.
        """
        if not isinstance(data, Mapping):
            raise ValueError("latent parameters must be a JSON object")
        if data.get("format") != PARAMS_FORMAT:
            raise ValueError(f"latent parameters: format is not {PARAMS_FORMAT!r}")
        names = (
            "event_types",
            "state_names",
            "initial",
            "transitions",
            "first_event",
            "rates",
            "activity_levels",
            "activity_weights",
            "quiet_states",
        )
        for name in names:
            if name not in data:
                raise ValueError(f"latent parameters: missing field {name!r}")
        arrays = {}
        for name in names[2:8]:
            arrays[name] = _float_array(data[name], name)
        for name in ("event_types", "state_names"):
            value = data[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"latent parameters: {name} must be a list of strings")
        quiet = data["quiet_states"]
        if not isinstance(quiet, list) or not all(
            isinstance(q, int) and not isinstance(q, bool) for q in quiet
        ):
            raise ValueError("latent parameters: quiet_states must be a list of integers")
        return cls(
            event_types=tuple(data["event_types"]),
            state_names=tuple(data["state_names"]),
            quiet_states=tuple(quiet),
            **arrays,
        )


def _float_array(value: object, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"latent parameters: {name} is not an array of numbers") from exc
    if arr.dtype != np.float64:  # pragma: no cover - np.array(dtype=) guarantees it
        raise ValueError(f"latent parameters: {name} is not an array of numbers")
    return arr


def _check(p: LatentParams) -> None:
    """One-line ValueError for anything a filter could not run on."""
    k = p.initial.shape[0] if p.initial.ndim == 1 else -1
    v = len(p.event_types) + 1
    n_levels = p.activity_levels.shape[0]
    if p.initial.ndim != 1 or not 1 <= k <= MAX_STATES:
        raise ValueError(f"latent parameters: initial must be a vector of 1 to {MAX_STATES}")
    if not 1 <= n_levels <= MAX_LEVELS:
        raise ValueError(f"latent parameters: 1 to {MAX_LEVELS} activity levels required")
    if len(p.event_types) > MAX_EVENT_TYPES or len(set(p.event_types)) != len(p.event_types):
        raise ValueError(
            f"latent parameters: event_types must be distinct, at most {MAX_EVENT_TYPES}"
        )
    shapes = {
        "transitions": (k, k),
        "first_event": (k, v),
        "rates": (k, v),
        "activity_weights": (n_levels,),
    }
    for name, shape in shapes.items():
        if getattr(p, name).shape != shape:
            raise ValueError(
                f"latent parameters: {name} has shape {getattr(p, name).shape}, expected {shape}"
            )
    if len(p.state_names) != k:
        raise ValueError(f"latent parameters: {len(p.state_names)} state names for {k} states")
    for name in ("initial", "transitions", "first_event", "rates", "activity_weights"):
        arr = getattr(p, name)
        if not np.isfinite(arr).all():
            raise ValueError(f"latent parameters: {name} has a non-finite value")
        if (arr < 0).any():
            raise ValueError(f"latent parameters: {name} has a negative value")
    if not np.isfinite(p.activity_levels).all() or (p.activity_levels <= 0).any():
        raise ValueError("latent parameters: activity_levels must be finite and positive")
    for name in ("initial", "transitions", "first_event", "activity_weights"):
        sums = getattr(p, name).sum(axis=-1)
        if (np.abs(sums - 1.0) > 1e-6).any():
            raise ValueError(f"latent parameters: {name} does not sum to 1 (within 1e-6)")
    if any(not 0 <= q < k for q in p.quiet_states):
        raise ValueError(f"latent parameters: quiet_states must lie in [0, {k})")


# -- the filter ----------------------------------------------------------------------------


class LatentFilter:
    """The forward filter of :class:`LatentParams`, on plain arrays, with its tables.

    Built once per model (a few milliseconds: matrix powers per activity level), then
    cheap per customer: each event day costs one precomputed matrix-vector product per
    activity level, however long the silent run before it.

    Parameters
    ----------
    params
        The model.
    horizon_days
        Horizon of ``latent_p_silent_<h>``: probability of no event at all in the
        ``horizon_days`` days from ``as_of`` on.
    """

    def __init__(self, params: LatentParams, *, horizon_days: int = 90) -> None:
        if isinstance(horizon_days, bool) or not isinstance(horizon_days, int) or horizon_days < 1:
            raise ValueError(f"horizon_days must be a whole number >= 1, got {horizon_days!r}")
        self.params = params
        self.horizon_days = horizon_days
        a = np.ascontiguousarray(params.transitions)
        rates = np.maximum(params.rates, _TINY)
        levels = params.activity_levels
        total = rates.sum(axis=1)
        self._log_rates = np.ascontiguousarray(np.log(rates).T)  # (V + 1, K): per event, a row
        self._log_first = np.ascontiguousarray(np.log(np.maximum(params.first_event, _TINY)).T)
        self._log_init = np.log(np.maximum(params.initial, _TINY))
        self._total = total
        self._levels = levels.copy()
        self._log_levels = np.log(levels)
        with np.errstate(divide="ignore"):
            self._log_weights = np.log(params.activity_weights)
        self._tables = _power_tables(a, levels, total)
        self._silent = _silent_probability(a, levels, total, horizon_days)
        self._silent_day = np.exp(-levels[:, None] * total[None, :])  # (L, K)
        self._type_columns: dict[tuple[str, ...], np.ndarray] = {}
        quiet = np.zeros(params.n_states, dtype=bool)
        quiet[list(params.quiet_states)] = True
        self._quiet = quiet

    @property
    def feature_names(self) -> list[str]:
        """Output columns, in order."""
        names = [f"latent_state_{k}" for k in range(self.params.n_states)]
        names += ["latent_log_activity", f"latent_p_silent_{self.horizon_days}"]
        if self.params.quiet_states:
            names.append("latent_p_quiet")
        return names

    def describe(self) -> list[tuple[str, str]]:
        """``(name, description)`` of each output column, in order."""
        out = [
            (
                f"latent_state_{k}",
                f"Filtered probability of latent state {k} ({name}) on the day before as_of.",
            )
            for k, name in enumerate(self.params.state_names)
        ]
        out.append(("latent_log_activity", "Posterior mean log activity multiplier."))
        out.append(
            (
                f"latent_p_silent_{self.horizon_days}",
                f"Probability of no event at all in the {self.horizon_days} days from as_of on.",
            )
        )
        if self.params.quiet_states:
            out.append(("latent_p_quiet", "Filtered probability of a quiet latent state."))
        return out

    def type_columns(self, type_names: Sequence[str]) -> np.ndarray:
        """Rate column of each of ``type_names`` (``other`` for types outside the vocabulary)."""
        key = tuple(str(n) for n in type_names)
        cols = self._type_columns.get(key)
        if cols is None:
            index = {t: i for i, t in enumerate(self.params.event_types)}
            other = len(self.params.event_types)
            cols = np.array([index.get(n, other) for n in key], dtype=np.int64)
            if len(self._type_columns) < 64:  # bounded: type lists come from callers
                self._type_columns[key] = cols
        return cols

    def matrix(
        self,
        customer_codes: np.ndarray,
        t_ns: np.ndarray,
        type_codes: np.ndarray,
        *,
        n_customers: int,
        type_names: Sequence[str],
        as_of_ns: int,
    ) -> np.ndarray:
        """Latent features at one ``as_of`` from plain arrays: no pandas.

        Parameters
        ----------
        customer_codes
            Integer customer code of each event, in ``[0, n_customers)``.
        t_ns
            Event times, ``int64`` nanoseconds since the epoch, UTC; any order.
        type_codes
            Index of each event's type in ``type_names``.
        n_customers
            Number of customers; row ``c`` of the result is customer code ``c``.
        type_names
            Event-type names the codes refer to.
        as_of_ns
            The point in time; events at or after it are never read.

        Returns
        -------
        numpy.ndarray
            ``float64`` of shape ``(n_customers, len(feature_names))``; NaN rows for
            customers without an event before ``as_of``.
        """
        codes = np.asarray(customer_codes, dtype=np.int64)
        n = codes.shape[0]
        if not (len(t_ns) == len(type_codes) == n):
            raise ValueError("customer_codes, t_ns and type_codes differ in length")
        if n and (codes.min() < 0 or codes.max() >= n_customers):
            raise ValueError(f"customer codes must lie in [0, {n_customers})")
        et = np.asarray(type_codes, dtype=np.int64)
        if n and (et.min() < 0 or et.max() >= len(type_names)):
            raise ValueError(f"event-type codes must lie in [0, {len(type_names)})")
        ptr, ts, cols = _layout(codes, n_customers, np.asarray(t_ns, dtype=np.int64), et)
        cols = self.type_columns(type_names)[cols]
        rows = np.arange(n_customers, dtype=np.int64)
        return self._run(ptr, ts, cols, rows, np.full(n_customers, as_of_ns, dtype=np.int64))

    def _run(
        self,
        ptr: np.ndarray,
        ts: np.ndarray,
        cols: np.ndarray,
        row_cust: np.ndarray,
        row_asof: np.ndarray,
    ) -> np.ndarray:
        """Features of each row (customer code, or -1 for none; and its as_of)."""
        n_rows = row_cust.shape[0]
        k = self.params.n_states
        state = np.empty((n_rows, k))
        level = np.empty((n_rows, self._levels.shape[0]))
        silent = np.empty(n_rows)
        tb = self._tables
        _filter_rows(
            ptr,
            ts,
            cols,
            row_cust,
            row_asof,
            self._log_init,
            self._log_first,
            self._log_rates,
            self._total,
            self._levels,
            self._log_levels,
            self._log_weights,
            tb.q,
            tb.q_log,
            tb.p,
            tb.p_log,
            tb.b,
            tb.b_log,
            tb.a,
            self._silent,
            self._silent_day,
            state,
            level,
            silent,
        )
        parts = [state, (level @ self._log_levels)[:, None], silent[:, None]]
        if self.params.quiet_states:
            parts.append(state[:, self._quiet].sum(axis=1, keepdims=True))
        return np.concatenate(parts, axis=1)


def forecast_states(filtered: np.ndarray, params: LatentParams, horizon_days: int) -> np.ndarray:
    """Latent-state distribution ``horizon_days`` days after day 0: ``filtered @ A^h``.

    Parameters
    ----------
    filtered
        ``(n, K)`` filtered posteriors (the ``latent_state_<k>`` columns); NaN rows stay
        NaN.
    params
        The model.
    horizon_days
        Days ahead, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``(n, K)``: the distribution of the state on day ``-horizon_days`` (the last of
        the ``horizon_days`` days from ``as_of`` on), whatever the customer does then.
    """
    if isinstance(horizon_days, bool) or not isinstance(horizon_days, int) or horizon_days < 0:
        raise ValueError(f"horizon_days must be a whole number >= 0, got {horizon_days!r}")
    f = np.asarray(filtered, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != params.n_states:
        raise ValueError(f"filtered must have shape (n, {params.n_states})")
    return f @ np.linalg.matrix_power(params.transitions, horizon_days)


@dataclass(frozen=True)
class _Tables:
    a: np.ndarray  # (K, K)
    q: np.ndarray  # (L, G + 1, K, K): (A S_l)^g A, scaled to max 1
    q_log: np.ndarray  # (L, G + 1): log of the scale
    p: np.ndarray  # (L, G + 1, K, K): (A S_l)^g, scaled
    p_log: np.ndarray
    b: np.ndarray  # (L, J, K, K): (A S_l)^(2^j), scaled
    b_log: np.ndarray


def _power_tables(a: np.ndarray, levels: np.ndarray, total: np.ndarray) -> _Tables:
    """Matrix powers of one silent day ``A diag(exp(-level * total rate))`` per level.

    Each matrix is stored divided by its largest entry, with the log of that entry
    beside it: high powers of an active level underflow otherwise.
    """
    n_l, k = levels.shape[0], a.shape[0]
    g = _TABLE_DAYS
    q = np.empty((n_l, g + 1, k, k))
    p = np.empty((n_l, g + 1, k, k))
    q_log = np.empty((n_l, g + 1))
    p_log = np.empty((n_l, g + 1))
    b = np.empty((n_l, _BINARY_POWERS, k, k))
    b_log = np.empty((n_l, _BINARY_POWERS))
    for li, lam in enumerate(levels):
        silent = a * np.exp(-lam * total)[None, :]
        cur, cur_log = np.eye(k), 0.0
        for d in range(g + 1):
            p[li, d], p_log[li, d] = cur, cur_log
            qa = cur @ a
            m = qa.max()
            q[li, d], q_log[li, d] = qa / m, cur_log + math.log(m)
            nxt = cur @ silent
            m = nxt.max()
            cur, cur_log = nxt / m, cur_log + math.log(m)
        cur, cur_log = silent / silent.max(), math.log(silent.max())
        for j in range(_BINARY_POWERS):
            b[li, j], b_log[li, j] = cur, cur_log
            sq = cur @ cur
            m = sq.max()
            cur, cur_log = sq / m, 2 * cur_log + math.log(m)
    return _Tables(a, q, q_log, p, p_log, b, b_log)


def _silent_probability(
    a: np.ndarray, levels: np.ndarray, total: np.ndarray, horizon: int
) -> np.ndarray:
    """``(L, K)``: P(no event in the next ``horizon`` days | state on day 0, level)."""
    out = np.empty((levels.shape[0], a.shape[0]))
    for li, lam in enumerate(levels):
        step = a * np.exp(-lam * total)[None, :]
        u = np.ones(a.shape[0])
        for _ in range(horizon):
            u = step @ u
        out[li] = u
    return out


@numba.njit(cache=True)
def _vecmat(v, m, out):  # type: ignore[no-untyped-def]
    k = v.shape[0]
    for j in range(k):
        out[j] = 0.0
    for i in range(k):
        vi = v[i]
        if vi != 0.0:
            for j in range(k):
                out[j] += vi * m[i, j]


@numba.njit(cache=True)
def _renorm(v, tmp, log_scale):  # type: ignore[no-untyped-def]
    """v <- tmp / sum(tmp); return log_scale + log(sum), or -inf when all is zero."""
    s = 0.0
    for j in range(tmp.shape[0]):
        s += tmp[j]
    if not s > 0.0:
        for j in range(v.shape[0]):
            v[j] = 1.0 / v.shape[0]
        return -np.inf
    for j in range(v.shape[0]):
        v[j] = tmp[j] / s
    return log_scale + np.log(s)


@numba.njit(cache=True)
def _silent_run(v, tmp, li, g, p, p_log, b, b_log):  # type: ignore[no-untyped-def]
    """Apply g silent days to level li's vector; return the log of the mass kept."""
    out = 0.0
    table = p.shape[1] - 1
    while g > table:
        j = 0
        while (1 << (j + 1)) <= g and j + 1 < b.shape[1]:
            j += 1
        _vecmat(v, b[li, j], tmp)
        out = _renorm(v, tmp, out + b_log[li, j])
        g -= 1 << j
    if g > 0:
        _vecmat(v, p[li, g], tmp)
        out = _renorm(v, tmp, out + p_log[li, g])
    return out


@numba.njit(parallel=True, cache=True)
def _filter_rows(  # type: ignore[no-untyped-def]  # noqa: PLR0913
    ptr,
    t,
    col,
    row_cust,
    row_asof,
    log_init,
    log_first,
    log_rates,
    total,
    levels,
    log_levels,
    log_weights,
    q,
    q_log,
    p,
    p_log,
    b,
    b_log,
    a,
    silent,
    silent_day,
    out_state,
    out_level,
    out_silent,
):
    day = 86_400_000_000_000
    k = a.shape[0]
    n_l = levels.shape[0]
    table = q.shape[1] - 1
    for r in numba.prange(row_cust.shape[0]):
        c = row_cust[r]
        as_of = row_asof[r]
        e0 = ptr[c] if c >= 0 else 0
        e1 = ptr[c + 1] if c >= 0 else 0
        stop = e0
        while stop < e1 and t[stop] < as_of:  # time-sorted: nothing at or after as_of
            stop += 1
        if stop == e0:
            out_state[r, :] = np.nan
            out_level[r, :] = np.nan
            out_silent[r] = np.nan
            continue
        v = np.empty((n_l, k))
        cl = np.empty(n_l)
        tmp = np.empty(k)
        prop = np.empty(k)
        es = np.empty(k)
        s = np.zeros(k)
        # Events older than _MAX_AGE_NS are read at that age: the differences below
        # stay in int64 (it saturates at its least value, where nothing is older).
        lo = as_of - _MAX_AGE_NS if as_of >= _MIN_NS + _MAX_AGE_NS else _MIN_NS
        # arrival day: the first event's type, then the rest of that day's events over
        # the part of the day after the first event
        t0 = max(t[e0], lo)
        d_prev = (as_of - t0 - 1) // day
        expo = (as_of - d_prev * day - t0) / day
        f = col[e0]
        i = e0 + 1
        n = 0
        while i < stop and (as_of - max(t[i], lo) - 1) // day == d_prev:
            lr = log_rates[col[i]]
            for j in range(k):  # an explicit loop: `s += row` would allocate per event
                s[j] += lr[j]
            n += 1
            i += 1
        for li in range(n_l):
            m = -np.inf
            for j in range(k):
                tmp[j] = (
                    log_init[j]
                    + log_first[f, j]
                    + s[j]
                    + n * log_levels[li]
                    - expo * levels[li] * total[j]
                )
                if tmp[j] > m:
                    m = tmp[j]
            for j in range(k):
                tmp[j] = np.exp(tmp[j] - m)
            cl[li] = _renorm(v[li], tmp, log_weights[li] + m)
        acc = np.ones(n_l)
        n_days = 0
        while i < stop:
            d = (as_of - max(t[i], lo) - 1) // day
            s[:] = 0.0
            n = 0
            while i < stop and (as_of - max(t[i], lo) - 1) // day == d:
                lr = log_rates[col[i]]
                for j in range(k):
                    s[j] += lr[j]
                n += 1
                i += 1
            g = d_prev - d - 1
            ms = -np.inf
            for j in range(k):
                if s[j] > ms:
                    ms = s[j]
            for j in range(k):
                es[j] = np.exp(s[j] - ms)
            for li in range(n_l):
                if cl[li] == -np.inf:
                    continue
                extra = 0.0
                gg = g
                if gg > table:
                    # cut the long run down with binary powers, then the table
                    extra = _silent_run(v[li], tmp, li, gg - table, p, p_log, b, b_log)
                    gg = table
                _vecmat(v[li], q[li, gg], prop)
                # emission = exp(s - ms) * exp(-level * total) * level^n: K + L
                # exponentials per day instead of K * L
                for j in range(k):
                    tmp[j] = prop[j] * es[j] * silent_day[li, j]
                tot = 0.0
                for j in range(k):
                    tot += tmp[j]
                if not tot > 0.0:
                    cl[li] = -np.inf
                    continue
                for j in range(k):
                    v[li, j] = tmp[j] / tot
                # The mass kept is a product, folded into the log only when it nears
                # the float range: a logarithm per level and day cost as much as the
                # rest of the step.
                cl[li] += extra + q_log[li, gg] + ms + n * log_levels[li]
                acc[li] *= tot
                if acc[li] < 1e-250 or acc[li] > 1e250:
                    cl[li] += np.log(acc[li])
                    acc[li] = 1.0
            d_prev = d
            n_days += 1
            if n_days % 8 == 0:
                # A level whose posterior fell below e^-50 of the best one is dropped: it
                # cannot move the features, and most customers' activity is settled
                # after a few event days, so the rest costs one level, not all.
                for li in range(n_l):
                    if cl[li] > -np.inf:
                        cl[li] += np.log(acc[li])
                    acc[li] = 1.0
                top = -np.inf
                for li in range(n_l):
                    if cl[li] > top:
                        top = cl[li]
                for li in range(n_l):
                    if cl[li] < top - 50.0:
                        cl[li] = -np.inf
        for li in range(n_l):
            if cl[li] > -np.inf:
                cl[li] += np.log(acc[li])
        # trailing silent days d_prev - 1 .. 0
        for li in range(n_l):
            if cl[li] != -np.inf and d_prev > 0:
                cl[li] += _silent_run(v[li], tmp, li, d_prev, p, p_log, b, b_log)
        top = -np.inf
        for li in range(n_l):
            if cl[li] > top:
                top = cl[li]
        tot = 0.0
        for li in range(n_l):
            w = np.exp(cl[li] - top) if cl[li] > -np.inf else 0.0
            out_level[r, li] = w
            tot += w
        out_state[r, :] = 0.0
        sil = 0.0
        for li in range(n_l):
            w = out_level[r, li] / tot
            out_level[r, li] = w
            for j in range(k):
                out_state[r, j] += w * v[li, j]
                sil += w * v[li, j] * silent[li, j]
        out_silent[r] = sil


# -- event layout --------------------------------------------------------------------------


def _layout(
    codes: np.ndarray, n_customers: int, t: np.ndarray, et: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events grouped by customer (CSR) and time-sorted within each: ``ptr, t, type``."""
    filler = np.zeros(codes.shape[0])
    ptr, ts, ets, amts = _group_by_customer(
        codes, n_customers, t, et, filler, numba.get_num_threads()
    )
    _sort_within_customers(ptr, ts, ets, amts)
    return ptr, ts, ets


@dataclass(frozen=True)
class _Log:
    customers: np.ndarray  # id per code, sorted
    ptr: np.ndarray
    t: np.ndarray
    et: np.ndarray  # code into type_names
    type_names: tuple[str, ...]

    @classmethod
    def from_frame(cls, events: pd.DataFrame) -> _Log:
        missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
        if missing:
            raise ValueError(f"events are missing the required column {missing[0]!r}")
        codes, customers = _customer_codes(events[CUSTOMER_ID])
        etype = _as_categorical(events[EVENT_TYPE], EVENT_TYPE)
        et = np.asarray(etype.codes, dtype=np.int64)
        if len(et) and et.min() < 0:
            raise ValueError("column 'event_type' has missing values")
        t = _as_ns(events[TIMESTAMP])
        ptr, ts, ets = _layout(np.asarray(codes, dtype=np.int64), len(customers), t, et)
        return cls(customers, ptr, ts, ets, tuple(str(c) for c in etype.categories))

    def rows_at(self, as_of: object) -> tuple[np.ndarray, np.ndarray]:
        """Codes of the customers with an event before ``as_of``, and that time per row."""
        cutoff = parse_as_of(as_of).as_unit("ns").value
        seen = np.diff(self.ptr) > 0
        if len(self.t):
            seen &= self.t[np.minimum(self.ptr[:-1], len(self.t) - 1)] < cutoff
        codes = np.flatnonzero(seen).astype(np.int64)
        return codes, np.full(len(codes), cutoff, dtype=np.int64)


# -- the estimator -------------------------------------------------------------------------


class LatentStateFeatures:
    """Fit the latent-stage HMM by EM on an event log; transform logs into features.

    Parameters
    ----------
    n_states
        Number of latent states; default ``2 x`` the number of stages when ``fit`` gets
        labels (an active and a quiet state per stage), else 6 (three activity regimes,
        each active and quiet).
    activity_levels
        Fixed multipliers of every rate (a per-customer activity level, mixing weights
        learned); ``(1.0,)`` switches the multiplier off.
    max_customers
        Customers (random, seeded) whose sequences EM runs on.
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the mean log-likelihood per
        customer improves by less than ``tol`` (relative).
    max_event_types
        Vocabulary size: the most frequent types before ``as_of``; the rest are pooled
        into ``other``.
    horizon_days
        Horizon of the ``latent_p_silent_<h>`` feature.
    seed
        Seed of the subsample.
    anchor_labels
        With labels at ``fit`` (and the default one active and one quiet state per
        stage), read each sequence's latest label as an observation of its latent state
        on that day: only the labelled stage's two states can emit it (up to a label
        noise of 1e-6). EM then keeps every state tied to the stage it was initialised
        from instead of drifting to whatever explains the events best; ``False`` uses
        labels for the initial parameters only.
    """

    def __init__(
        self,
        *,
        n_states: int | None = None,
        activity_levels: Sequence[float] = DEFAULT_ACTIVITY_LEVELS,
        max_customers: int = 3_000,
        max_iter: int = 40,
        tol: float = 1e-5,
        max_event_types: int = 24,
        horizon_days: int = 90,
        seed: int = 0,
        anchor_labels: bool = True,
    ) -> None:
        self.n_states = n_states
        self.activity_levels = activity_levels
        self.max_customers = max_customers
        self.max_iter = max_iter
        self.tol = tol
        self.max_event_types = max_event_types
        self.horizon_days = horizon_days
        self.seed = seed
        self.anchor_labels = anchor_labels

    @classmethod
    def from_params(cls, params: LatentParams, *, horizon_days: int = 90) -> LatentStateFeatures:
        """A fitted instance from saved parameters (e.g. ``LatentParams.from_dict``)."""
        out = cls(n_states=params.n_states, horizon_days=horizon_days)
        out.params_ = params
        out.filter_ = LatentFilter(params, horizon_days=horizon_days)
        return out

    # -- fit --------------------------------------------------------------------------

    def fit(
        self,
        events: pd.DataFrame,
        *,
        as_of: object = None,
        snapshots: pd.DataFrame | None = None,
        labels: pd.DataFrame | None = None,
    ) -> LatentStateFeatures:
        """Fit by Baum-Welch EM on the customers' sequences up to ``as_of``.

        Parameters
        ----------
        events
            Event frame (``customer_id``, ``timestamp``, ``event_type``).
        as_of
            One time: every customer's sequence ends on the day before it.
        snapshots
            Instead: ``customer_id``, ``as_of`` rows; each customer's latest one is used.
        labels
            Optional ``customer_id``, ``stage``, ``as_of`` rows: initialise one active and
            one quiet state per stage from the labelled customers' recent rates and, with
            ``anchor_labels``, anchor the states to the stages (a sequence's latest label
            at or before its end is an observation of its state on that day). Pass only
            labels the fit may see: never those of validation customers.

        Returns
        -------
        LatentStateFeatures
            ``self``, with ``params_``, ``filter_``, ``n_iter_``, ``log_likelihood_``
            (mean per customer, per iteration) and ``converged_``.
        """
        self._check_settings()
        log = _Log.from_frame(events)
        seq_cust, seq_asof = self._sequences(log, as_of, snapshots)
        if len(seq_cust) == 0:
            raise ValueError("no customer has an event before as_of: nothing to fit")
        rng = np.random.default_rng(self.seed)
        if len(seq_cust) > self.max_customers:
            pick = np.sort(rng.choice(len(seq_cust), self.max_customers, replace=False))
            seq_cust, seq_asof = seq_cust[pick], seq_asof[pick]
        vocabulary = _vocabulary(log, seq_cust, seq_asof, self.max_event_types)
        index = {name: i for i, name in enumerate(vocabulary)}
        cols = np.array([index.get(n, len(vocabulary)) for n in log.type_names], dtype=np.int64)[
            log.et
        ]
        levels = np.asarray(self.activity_levels, dtype=np.float64)
        params = self._initial(log, cols, vocabulary, seq_cust, seq_asof, labels, levels)
        seq_label, seq_label_day, allowed = _anchors(
            log, seq_cust, seq_asof, labels if self.anchor_labels else None, params
        )
        history: list[float] = []
        converged = False
        for _ in range(self.max_iter):
            params, ll = _em_step(
                params, log.ptr, log.t, cols, seq_cust, seq_asof, seq_label, seq_label_day, allowed
            )
            history.append(ll)
            if len(history) > 1 and abs(history[-1] - history[-2]) <= self.tol * abs(history[-2]):
                converged = True
                break
        self.params_ = params
        self.filter_ = LatentFilter(params, horizon_days=self.horizon_days)
        self.n_iter_ = len(history)
        self.log_likelihood_ = history
        self.converged_ = converged
        return self

    def _check_settings(self) -> None:
        levels = np.asarray(self.activity_levels, dtype=np.float64)
        if levels.ndim != 1 or not 1 <= len(levels) <= MAX_LEVELS or (levels <= 0).any():
            raise ValueError(f"activity_levels must be 1 to {MAX_LEVELS} positive numbers")
        if self.n_states is not None and not 1 <= self.n_states <= MAX_STATES:
            raise ValueError(f"n_states must lie in [1, {MAX_STATES}], got {self.n_states}")
        if self.max_customers < 1 or self.max_iter < 1 or self.max_event_types < 1:
            raise ValueError("max_customers, max_iter and max_event_types must be at least 1")

    @staticmethod
    def _sequences(
        log: _Log, as_of: object, snapshots: pd.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if (as_of is None) == (snapshots is None):
            raise ValueError("give exactly one of as_of (one time) or snapshots (a frame)")
        if snapshots is not None:
            codes, asof_ns, _ = _snapshot_arrays(snapshots, log.customers)
            keep = codes >= 0
            frame = pd.DataFrame({"c": codes[keep], "t": asof_ns[keep]})
            latest = frame.groupby("c", sort=True)["t"].max()
            seq_cust = latest.index.to_numpy(dtype=np.int64)
            seq_asof = latest.to_numpy(dtype=np.int64)
            first = log.t[np.minimum(log.ptr[seq_cust], max(len(log.t) - 1, 0))]
            keep = first < seq_asof if len(log.t) else np.zeros(len(seq_cust), dtype=bool)
            return seq_cust[keep], seq_asof[keep]
        return log.rows_at(as_of)

    def _initial(
        self,
        log: _Log,
        cols: np.ndarray,
        vocabulary: tuple[str, ...],
        seq_cust: np.ndarray,
        seq_asof: np.ndarray,
        labels: pd.DataFrame | None,
        levels: np.ndarray,
    ) -> LatentParams:
        n_cols = len(vocabulary) + 1
        window = _RECENT_DAYS * DAY_NS
        weights = np.full(len(levels), 1.0 / len(levels))
        mean_level = float(weights @ levels)
        if labels is not None:
            for col in (CUSTOMER_ID, "stage", "as_of"):
                if col not in labels.columns:
                    raise ValueError(f"labels are missing the column {col!r}")
            codes, asof_ns, _ = _snapshot_arrays(labels, log.customers)
            stage = labels["stage"].astype(str).to_numpy()
            groups = sorted(set(stage))
            counts, expo = _recent_counts(log.ptr, log.t, cols, codes, asof_ns, n_cols, window)
            active = []
            overall = _pooled(counts, expo)
            for g in groups:
                rate = _pooled(counts[stage == g], expo[stage == g])
                active.append(rate if rate.sum() > 0 else overall)
            names = [f"{g}_active" for g in groups] + [f"{g}_quiet" for g in groups]
        else:
            counts, expo = _recent_counts(log.ptr, log.t, cols, seq_cust, seq_asof, n_cols, window)
            n_regimes = max(1, (self.n_states or 6) // 2)
            total = counts.sum(axis=1) / np.maximum(expo, 1e-9)
            live = np.flatnonzero(counts.sum(axis=1) > 0)
            order = live[np.argsort(total[live], kind="stable")]
            parts = np.array_split(order, n_regimes)
            overall = _pooled(counts, expo)
            active = [_pooled(counts[p], expo[p]) if len(p) else overall for p in parts]
            active = [a if a.sum() > 0 else np.ones(n_cols) / n_cols for a in active]
            names = [f"regime{i}_active" for i in range(n_regimes)]
            names += [f"regime{i}_quiet" for i in range(n_regimes)]
        n_active = len(active)
        k = self.n_states or 2 * n_active
        rates = np.array(active) / mean_level
        quiet = rates * 0.01
        stacked = np.concatenate([rates, quiet])
        if k != len(stacked):  # an explicit n_states: cycle through the pattern
            stacked = stacked[np.arange(k) % len(stacked)] * (1 + 0.05 * np.arange(k))[:, None]
            names = [f"state{i}" for i in range(k)]
        rates = np.maximum(stacked, 1e-6)
        quiet_states = tuple(range(n_active, min(k, 2 * n_active)))
        a = np.full((k, k), 1e-3)
        for i in range(k):
            if i in quiet_states:
                a[i, i] = 0.97
                a[i, i - n_active] = 0.02
            else:
                a[i, i] = 0.95
                if i + n_active < k:
                    a[i, i + n_active] = 0.02
        a /= a.sum(axis=1, keepdims=True)
        init = np.where(np.isin(np.arange(k), quiet_states), 0.1, 1.0)
        first = np.ones((k, n_cols))
        return LatentParams(
            event_types=vocabulary,
            state_names=tuple(names),
            initial=init / init.sum(),
            transitions=a,
            first_event=first / first.sum(axis=1, keepdims=True),
            rates=rates,
            activity_levels=levels,
            activity_weights=weights,
            quiet_states=quiet_states,
        )

    # -- transform ----------------------------------------------------------------------

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """Names of the output columns (``latent_state_<k>``, ...)."""
        return np.asarray(self._fitted().feature_names, dtype=object)

    def _fitted(self) -> LatentFilter:
        filt = getattr(self, "filter_", None)
        if filt is None:
            raise ValueError("this LatentStateFeatures is not fitted yet: call fit first")
        return filt

    def transform(
        self,
        events: pd.DataFrame,
        *,
        as_of: object = None,
        snapshots: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Filtered latent features at ``as_of`` or per snapshot.

        Parameters
        ----------
        events
            Event frame; events at or after each row's ``as_of`` are never read.
        as_of
            One time: one row per customer with an event before it, indexed by
            ``customer_id`` in sorted order (the rows of ``build_features``).
        snapshots
            Instead: ``customer_id``, ``as_of`` rows; one output row each, in order,
            indexed by ``(customer_id, as_of)``; NaN for a customer without events
            before its ``as_of``.

        Returns
        -------
        pandas.DataFrame
            ``float64`` columns named by :meth:`get_feature_names_out`.
        """
        filt = self._fitted()
        if (as_of is None) == (snapshots is None):
            raise ValueError("give exactly one of as_of (one time) or snapshots (a frame)")
        log = _Log.from_frame(events)
        cols = filt.type_columns(log.type_names)[log.et]
        names = filt.feature_names
        if snapshots is not None:
            codes, asof_ns, index = _snapshot_arrays(snapshots, log.customers)
            values = filt._run(log.ptr, log.t, cols, codes, asof_ns)
            return pd.DataFrame(values, columns=names, index=index, copy=False)
        codes, asof_ns = log.rows_at(as_of)
        values = filt._run(log.ptr, log.t, cols, codes, asof_ns)
        ids = pd.Index(log.customers[codes], name=CUSTOMER_ID)
        return pd.DataFrame(values, columns=names, index=ids, copy=False)

    def forecast(self, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
        """Latent-state distribution ``horizon_days`` ahead of each row of ``transform``."""
        filt = self._fitted()
        k = filt.params.n_states
        state = features[[f"latent_state_{j}" for j in range(k)]].to_numpy(dtype=np.float64)
        out = forecast_states(state, filt.params, horizon_days)
        return pd.DataFrame(
            out, columns=[f"latent_state_{j}" for j in range(k)], index=features.index
        )


def _anchors(
    log: _Log,
    seq_cust: np.ndarray,
    seq_asof: np.ndarray,
    labels: pd.DataFrame | None,
    params: LatentParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sequence's latest label, as an observation of its latent state on that day.

    EM on the events alone maximises the likelihood of the events, not the agreement of
    states with stages: on a slow funnel (six stages, a customer event every few days)
    states initialised per stage drifted for tens of iterations, and the stage head's
    macro-F1 swung by 0.04 of the oracle's with where EM stopped. A label is one more
    emission on its day, ``P(label | state)``: 1 for the labelled stage's states, the
    label noise ``_LABEL_NOISE`` for the others (a mislabelled customer must not make
    the sequence impossible).

    Parameters
    ----------
    log
        The event log.
    seq_cust, seq_asof
        The sequences EM runs on: customer code and end (``as_of``, ns) of each.
    labels
        ``customer_id``, ``stage``, ``as_of`` rows, or ``None`` for no anchoring.
    params
        The initial parameters; state ``j`` belongs to stage ``j % n_stages`` (the order
        of :meth:`LatentStateFeatures._initial`: every stage's active state, then every
        stage's quiet state).

    Returns
    -------
    label, day, allowed
        Per sequence the stage index of its latest label at or before its end (-1: none)
        and the day that label describes, counted back from the end as the filter does
        (day 0 is the last day before the end); and the ``(n_stages, K)`` likelihood of
        each label given each state. No anchoring (all -1) when ``labels`` is ``None``
        or empty, or when the number of states is not two per stage.
    """
    n = len(seq_cust)
    none = (np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64), np.ones((1, 1)))
    k = params.n_states
    if labels is None or len(labels) == 0:
        return none
    groups = sorted(set(labels["stage"].astype(str)))
    if k != 2 * len(groups):  # an explicit n_states: states are not per stage
        return none
    codes, asof_ns, _ = _snapshot_arrays(labels, log.customers)
    stage = pd.Categorical(labels["stage"].astype(str), categories=groups).codes
    lab = pd.DataFrame({"c": codes, "t": asof_ns, "g": stage})
    seq = pd.DataFrame({"c": seq_cust, "end": seq_asof, "r": np.arange(n)})
    both = seq.merge(lab, on="c", how="inner")
    # a label after the sequence's end describes days EM never sees
    both = both[both["t"] <= both["end"]].sort_values(["r", "t"]).drop_duplicates("r", keep="last")
    label = np.full(n, -1, dtype=np.int64)
    day = np.zeros(n, dtype=np.int64)
    r = both["r"].to_numpy(dtype=np.int64)
    label[r] = both["g"].to_numpy(dtype=np.int64)
    day[r] = (both["end"].to_numpy(dtype=np.int64) - both["t"].to_numpy(dtype=np.int64)) // DAY_NS
    allowed = np.full((len(groups), k), _LABEL_NOISE)
    for j in range(k):
        allowed[j % len(groups), j] = 1.0
    return label, day, allowed


def _pooled(counts: np.ndarray, expo: np.ndarray) -> np.ndarray:
    """Pooled daily rate per type of the customers with a recent event."""
    live = counts.sum(axis=1) > 0
    if not live.any():
        return np.zeros(counts.shape[1])
    return counts[live].sum(axis=0) / max(float(expo[live].sum()), 1e-9)


def _vocabulary(
    log: _Log, seq_cust: np.ndarray, seq_asof: np.ndarray, size: int
) -> tuple[str, ...]:
    """The ``size`` most frequent types among the sequences' events (ties by name)."""
    counts = _type_counts(log.ptr, log.t, log.et, seq_cust, seq_asof, len(log.type_names))
    order = sorted(
        (i for i in range(len(counts)) if counts[i] > 0 and log.type_names[i] != OTHER),
        key=lambda i: (-counts[i], log.type_names[i]),
    )
    return tuple(log.type_names[i] for i in order[:size])


@numba.njit(cache=True)
def _type_counts(ptr, t, et, seq_cust, seq_asof, n_types):  # type: ignore[no-untyped-def]
    out = np.zeros(n_types, dtype=np.int64)
    for r in range(seq_cust.shape[0]):
        c = seq_cust[r]
        for i in range(ptr[c], ptr[c + 1]):
            if t[i] >= seq_asof[r]:
                break
            out[et[i]] += 1
    return out


@numba.njit(cache=True)
def _recent_counts(ptr, t, col, codes, asof, n_cols, window):  # type: ignore[no-untyped-def]
    """Counts per column in ``[as_of - window, as_of)`` and the days exposed in it."""
    counts = np.zeros((codes.shape[0], n_cols))
    expo = np.zeros(codes.shape[0])
    for r in range(codes.shape[0]):
        c = codes[r]
        if c < 0:
            continue
        e0, e1 = ptr[c], ptr[c + 1]
        if e1 == e0 or t[e0] >= asof[r]:
            continue
        start = max(t[e0], asof[r] - window)
        expo[r] = (asof[r] - start) / 86_400_000_000_000
        for i in range(e0, e1):
            if t[i] >= asof[r]:
                break
            if t[i] >= asof[r] - window:
                counts[r, col[i]] += 1.0
    return counts, expo


# -- EM ------------------------------------------------------------------------------------


def _em_step(
    p: LatentParams,
    ptr: np.ndarray,
    t: np.ndarray,
    cols: np.ndarray,
    seq_cust: np.ndarray,
    seq_asof: np.ndarray,
    seq_label: np.ndarray,
    seq_label_day: np.ndarray,
    allowed: np.ndarray,
) -> tuple[LatentParams, float]:
    """One Baum-Welch iteration; returns the new parameters and the mean log-likelihood
    per sequence under the old ones (of the events and, where anchored, the labels; see
    :func:`_anchors` for ``seq_label``, ``seq_label_day`` and ``allowed``)."""
    n, k, n_l = len(seq_cust), p.n_states, len(p.activity_levels)
    v = p.rates.shape[1]
    acc_init = np.zeros((n, k))
    acc_level = np.zeros((n, n_l))
    acc_first = np.zeros((n, k, v))
    acc_trans = np.zeros((n, k, k))
    acc_num = np.zeros((n, k, v))
    acc_den = np.zeros((n, k))
    loglik = np.zeros(n)
    rates = np.maximum(p.rates, _TINY)
    with np.errstate(divide="ignore"):
        log_weights = np.log(p.activity_weights)
    _e_step(
        ptr,
        t,
        cols,
        seq_cust,
        seq_asof,
        np.log(np.maximum(p.initial, _TINY)),
        np.ascontiguousarray(np.log(np.maximum(p.first_event, _TINY)).T),
        np.ascontiguousarray(np.log(rates).T),
        rates.sum(axis=1),
        np.ascontiguousarray(p.activity_levels),
        np.log(p.activity_levels),
        log_weights,
        np.ascontiguousarray(p.transitions),
        seq_label,
        seq_label_day,
        allowed,
        acc_init,
        acc_level,
        acc_first,
        acc_trans,
        acc_num,
        acc_den,
        loglik,
    )
    # Dirichlet-like smoothing towards the previous values (a state nobody visits keeps
    # its parameters) plus a tiny uniform floor: nothing ever becomes exactly 0.
    prior = 1e-2

    def dist(counts: np.ndarray, old: np.ndarray) -> np.ndarray:
        x = counts + prior * old + 1e-10
        return x / x.sum(axis=-1, keepdims=True)

    num, den = acc_num.sum(axis=0), acc_den.sum(axis=0)
    new_rates = np.maximum((num + prior * p.rates) / (den[:, None] + prior), 1e-10)
    new = LatentParams(
        event_types=p.event_types,
        state_names=p.state_names,
        initial=dist(acc_init.sum(axis=0), p.initial),
        transitions=dist(acc_trans.sum(axis=0), p.transitions),
        first_event=dist(acc_first.sum(axis=0), p.first_event),
        rates=new_rates,
        activity_levels=p.activity_levels,
        activity_weights=dist(acc_level.sum(axis=0), p.activity_weights),
        quiet_states=p.quiet_states,
    )
    return new, float(loglik.mean())


@numba.njit(parallel=True, cache=True)
def _e_step(  # type: ignore[no-untyped-def]  # noqa: PLR0913
    ptr,
    t,
    col,
    seq_cust,
    seq_asof,
    log_init,
    log_first,
    log_rates,
    total,
    levels,
    log_levels,
    log_weights,
    a,
    seq_label,
    seq_label_day,
    allowed,
    acc_init,
    acc_level,
    acc_first,
    acc_trans,
    acc_num,
    acc_den,
    loglik,
):
    """Scaled forward-backward, daily steps, per sequence; sufficient statistics per
    sequence (summed by the caller, so the result does not depend on threads)."""
    day = 86_400_000_000_000
    k = a.shape[0]
    n_l = levels.shape[0]
    for r in numba.prange(seq_cust.shape[0]):
        c = seq_cust[r]
        as_of = seq_asof[r]
        e0, e1 = ptr[c], ptr[c + 1]
        stop = e0
        while stop < e1 and t[stop] < as_of:
            stop += 1
        if stop == e0:
            continue
        d0 = (as_of - t[e0] - 1) // day
        n_days = d0 + 1
        s = np.zeros((n_days, k))
        cnt = np.zeros(n_days)
        for i in range(e0 + 1, stop):
            tau = d0 - (as_of - t[i] - 1) // day
            for j in range(k):
                s[tau, j] += log_rates[col[i], j]
            cnt[tau] += 1.0
        expo0 = (as_of - d0 * day - t[e0]) / day
        f = col[e0]
        em = np.empty((n_days, n_l, k))
        shift = 0.0
        lab = seq_label[r]
        tau_lab = d0 - seq_label_day[r] if lab >= 0 else -1
        for tau in range(n_days):
            ex = expo0 if tau == 0 else 1.0
            m = -np.inf
            for li in range(n_l):
                for j in range(k):
                    x = s[tau, j] + cnt[tau] * log_levels[li] - ex * levels[li] * total[j]
                    if tau == 0:
                        x += log_first[f, j]
                    em[tau, li, j] = x
                    if x > m:
                        m = x
            shift += m
            for li in range(n_l):
                for j in range(k):
                    em[tau, li, j] = np.exp(em[tau, li, j] - m)
                    if tau == tau_lab:  # the label is one more emission on its day
                        em[tau, li, j] *= allowed[lab, j]
        alpha = np.empty((n_days, n_l, k))
        scale = np.empty(n_days)
        tot = 0.0
        for li in range(n_l):
            for j in range(k):
                x = np.exp(log_weights[li] + log_init[j]) * em[0, li, j]
                alpha[0, li, j] = x
                tot += x
        scale[0] = tot
        alpha[0] /= tot
        for tau in range(1, n_days):
            tot = 0.0
            for li in range(n_l):
                for j in range(k):
                    alpha[tau, li, j] = 0.0
                for i in range(k):
                    ai = alpha[tau - 1, li, i]
                    if ai != 0.0:
                        for j in range(k):
                            alpha[tau, li, j] += ai * a[i, j]
                for j in range(k):
                    alpha[tau, li, j] *= em[tau, li, j]
                    tot += alpha[tau, li, j]
            scale[tau] = tot
            alpha[tau] /= tot
        ll = shift
        for tau in range(n_days):
            ll += np.log(scale[tau])
        loglik[r] = ll
        # backward, with the statistics of each day as soon as its beta is known
        beta = np.ones((n_l, k))
        w = np.empty((n_l, k))
        gk = np.zeros((n_days, k))
        for tau in range(n_days - 1, -1, -1):
            ex = expo0 if tau == 0 else 1.0
            for li in range(n_l):
                for j in range(k):
                    g = alpha[tau, li, j] * beta[li, j]
                    gk[tau, j] += g
                    acc_den[r, j] += g * levels[li] * ex
                    if tau == 0:
                        acc_level[r, li] += g
            if tau == 0:
                break
            for li in range(n_l):
                for j in range(k):
                    w[li, j] = em[tau, li, j] * beta[li, j] / scale[tau]
                for i in range(k):
                    ai = alpha[tau - 1, li, i]
                    acc = 0.0
                    for j in range(k):
                        x = a[i, j] * w[li, j]
                        acc += x
                        acc_trans[r, i, j] += ai * x
                    beta[li, i] = acc
        for j in range(k):
            acc_init[r, j] = gk[0, j]
            acc_first[r, j, f] += gk[0, j]
        for i in range(e0 + 1, stop):
            tau = d0 - (as_of - t[i] - 1) // day
            for j in range(k):
                acc_num[r, j, col[i]] += gk[tau, j]


__all__ = [
    "DEFAULT_ACTIVITY_LEVELS",
    "LatentFilter",
    "LatentParams",
    "LatentStateFeatures",
    "forecast_states",
    "model_features",
]
