"""Check event rows against the contract; rows that fail go to quarantine with a reason.

:func:`validate_events` is the in-memory core of :func:`features.events.load_events`, so
a DataFrame that arrives by another route (the HTTP API, a chunk of a large file) goes
through exactly the same checks.

Everything is vectorised: labels (customer ids, event names) are checked once per
distinct value and broadcast through integer codes, times and amounts are parsed by
pyarrow where the whole column allows it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.contract import (
    AMOUNT,
    CANONICAL_EVENT_TYPES,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TYPE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    is_timestamp_text,
    parse_timestamps,
    to_canonical_frame,
)
from customer_lifecycle.features.mapping import TIMESTAMP_UNITS, EventMapping
from customer_lifecycle.features.summary import LoadSummary

#: Quarantine reasons, in the order they are checked; a row failing several checks
#: is reported under the first.
QUARANTINE_REASONS: tuple[str, ...] = (
    "missing_customer_id",
    "missing_event_type",
    "unparseable_timestamp",
    "unparseable_amount",
    "amount_out_of_range",
    "negative_purchase_amount",
    "unknown_event_type",
)

UnknownEvents = Literal["strict", "lenient"]

#: Largest accepted ``|amount|``. Features add amounts up (sums, means over a window), and
#: two amounts near the float64 limit (1.8e308) already add up to ``inf``; below this
#: bound a billion events still sum to a finite number (1e24), so every feature of an
#: accepted row is finite. Larger amounts are quarantined as ``amount_out_of_range``.
MAX_AMOUNT = 1e15

_CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# Spellings of "no value" that spreadsheet and R/pandas exports write into amount cells.
_NULL_TOKENS = pa.array(["", "na", "n/a", "nan", "null", "none"])
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NAT = np.iinfo(np.int64).min


def validate_events(
    frame: pd.DataFrame,
    *,
    mapping: EventMapping | None = None,
    unknown_events: UnknownEvents = "strict",
    source: str = "<frame>",
    row_offset: int = 0,
    label: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, LoadSummary]:
    """Check the rows of an in-memory event table, as :func:`features.events.load_events` does.

    Parameters
    ----------
    frame
        Source rows under their source column names; it is not modified.
    mapping, unknown_events
        As for :func:`features.events.load_events`.
    source
        Name used in the summary and in error messages.
    row_offset
        Added to the 1-based position of each row to give its ``row_number`` (for
        callers that validate a file in chunks).
    label
        How error messages name the rows; default ``"events <source>"``.

    Returns
    -------
    events : pandas.DataFrame
        Canonical event frame of the rows that passed.
    quarantine : pandas.DataFrame
        Failed rows: ``row_number``, ``reason``, then the source columns as strings.
    summary : LoadSummary
        Counts; ``quarantine_path`` is ``None`` (nothing is written).

    Raises
    ------
    ValueError
        On an empty frame, a missing required column, or a bad ``unknown_events``.
    """
    label = f"events {source}" if label is None else label
    if unknown_events not in ("strict", "lenient"):
        raise ValueError(f"unknown_events must be 'strict' or 'lenient', got {unknown_events!r}")
    n = len(frame)
    if n == 0:
        raise ValueError(f"{label} has no rows")
    columns, absent = _resolve_columns(frame, mapping, label)
    event_names = mapping.event_types if mapping else {}

    cid_codes, cid_labels = _labels(frame[columns[CUSTOMER_ID]])
    cid_label_missing = pd.Index(cid_labels, dtype=object).str.strip().to_numpy() == ""
    cid_missing = _broadcast(cid_label_missing, cid_codes, missing=True)

    ev_codes, ev_raw = _labels(frame[columns[EVENT_TYPE]])
    ev_stripped = pd.Index(ev_raw, dtype=object).str.strip()
    ev_labels = np.array([event_names.get(name, name) for name in ev_stripped], dtype=object)
    ev_missing = _broadcast(ev_labels == "", ev_codes, missing=True)
    ev_unknown = ~np.isin(ev_labels, CANONICAL_EVENT_TYPES) & (ev_labels != "")

    unit = mapping.timestamp_unit if mapping else None
    times = _parse_times(frame[columns[TIMESTAMP]], unit, label, columns[TIMESTAMP])
    checks: list[np.ndarray | None] = [cid_missing, ev_missing, times == np.int64(_NAT)]

    amount: np.ndarray | None = None
    if AMOUNT in columns:
        amount, amount_bad = _parse_numbers(frame[columns[AMOUNT]])
        is_purchase = _broadcast(ev_labels == "purchase", ev_codes, missing=False)
        checks += [amount_bad, np.abs(amount) > MAX_AMOUNT, is_purchase & (amount < 0)]
        is_refund = _broadcast(ev_labels == "refund", ev_codes, missing=False)
        # Refunds arrive as +x or -x depending on the source; store the magnitude.
        amount = np.where(is_refund, np.abs(amount), amount)
    else:
        checks += [None, None, None]
    unknown_rows = _broadcast(ev_unknown, ev_codes, missing=False)
    checks.append(unknown_rows if unknown_events == "strict" else None)

    reason = np.zeros(n, dtype=np.int8)
    # Assign from the last check to the first so the first failing check wins.
    for code in range(len(checks), 0, -1):
        mask = checks[code - 1]
        if mask is not None:
            reason[mask] = code
    counts = np.bincount(reason, minlength=len(QUARANTINE_REASONS) + 1)
    quarantined = {
        QUARANTINE_REASONS[i - 1]: int(counts[i]) for i in range(1, len(counts)) if counts[i]
    }
    keep = None if counts[0] == n else np.flatnonzero(reason == 0)

    def kept(values: np.ndarray) -> np.ndarray:
        return values if keep is None else values[keep]

    events = pd.DataFrame(
        {
            CUSTOMER_ID: _categorical(kept(cid_codes), cid_labels),
            TIMESTAMP: pd.DatetimeIndex(kept(times).view("M8[ns]")).tz_localize("UTC"),
            EVENT_TYPE: _categorical(kept(ev_codes), ev_labels),
        }
    )
    if amount is not None:
        events[AMOUNT] = kept(amount).astype("float64")
    if CHANNEL in columns:
        ch_codes, ch_labels = _labels(frame[columns[CHANNEL]])
        ch_blank = np.append(pd.Index(ch_labels, dtype=object).str.strip().to_numpy() == "", True)
        events[CHANNEL] = _categorical(kept(np.where(ch_blank[ch_codes], -1, ch_codes)), ch_labels)
    events = to_canonical_frame(events)

    unknown_kept: dict[str, int] = {}
    if unknown_events == "lenient" and len(events):
        per_type = events[EVENT_TYPE].value_counts(sort=False)
        unknown_kept = {
            str(name): int(count)
            for name, count in per_type.items()
            if count and name not in CANONICAL_EVENT_TYPES
        }

    bad = np.flatnonzero(reason)
    quarantine = frame.iloc[bad].astype("str").reset_index(drop=True)
    quarantine.insert(0, "reason", np.asarray(QUARANTINE_REASONS, dtype=object)[reason[bad] - 1])
    quarantine.insert(0, "row_number", bad + row_offset + 1)
    summary = LoadSummary(
        source=source,
        rows_read=n,
        rows_kept=len(events),
        quarantined=quarantined,
        unknown_event_types=unknown_kept,
        absent_columns=absent,
    )
    return events, quarantine, summary


def _resolve_columns(
    frame: pd.DataFrame, mapping: EventMapping | None, label: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Return contract column -> source column present, and optional ones mapped but absent."""
    present = set(frame.columns)
    # names holding line breaks or other control characters are quoted: one line
    shown = [n if n.isprintable() else repr(n) for n in map(str, list(frame.columns)[:12])]
    found = ", ".join(shown) + (", ..." if frame.shape[1] > 12 else "")
    columns: dict[str, str] = {}
    absent: dict[str, str] = {}
    for column in _CONTRACT_COLUMNS:
        src = mapping.source_column(column) if mapping else column
        if src in present:
            columns[column] = src
        elif column in REQUIRED_COLUMNS:
            if src != column:
                raise ValueError(
                    f"{label} has no column {src!r}, which the mapping names for {column!r} "
                    f"(columns found: {found})"
                )
            raise ValueError(f"{label} has no required column {column!r} (columns found: {found})")
        elif src != column:
            absent[column] = src
    return columns, absent


def _labels(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (-1 = missing) and the distinct values as strings."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        uniques: Any = series.cat.categories
    else:
        try:
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
        except TypeError:  # unhashable cells (a list where an id should be) count as text
            codes, uniques = pd.factorize(series.map(_cell_text), use_na_sentinel=True)
    values = pd.Index(uniques)
    if pd.api.types.is_float_dtype(values.dtype) and _whole(values.to_numpy()):
        # Integer ids that pandas widened to float because some were missing.
        values = values.astype("int64")
    return codes.astype(np.int32, copy=False), np.asarray(values.astype(str), dtype=object)


def _whole(values: np.ndarray) -> bool:
    """Every value an integer that a float holds exactly (beyond 2**53, or infinite, an
    integer cast would give another number)."""
    return bool(np.all(np.abs(values) <= 2**53) and np.all(np.mod(values, 1) == 0))


def _cell_text(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def _broadcast(per_label: np.ndarray, codes: np.ndarray, *, missing: bool) -> np.ndarray:
    """Row mask from a per-label mask; code -1 (missing) takes the value ``missing``."""
    return np.append(per_label.astype(bool), missing)[codes]


def _categorical(codes: np.ndarray, labels: np.ndarray) -> pd.Categorical:
    """Categorical of ``labels[codes]`` (-1 = missing), sorted categories, only those used.

    Labels that became equal (two source names translated to one event type) merge.
    """
    codes = codes.astype(np.int32, copy=False)
    used = np.bincount(codes + 1, minlength=len(labels) + 1)[1:] > 0
    categories, inverse = np.unique(labels[used].astype(str), return_inverse=True)
    lookup = np.full(len(labels) + 1, -1, dtype=np.int32)  # last slot: code -1 stays -1
    lookup[np.flatnonzero(used)] = inverse
    return pd.Categorical.from_codes(
        lookup[codes], categories=pd.Index(categories, dtype="str"), validate=False
    )


def _arrow_strings(series: pd.Series) -> pa.ChunkedArray:
    text = series if isinstance(series.dtype, pd.StringDtype) else series.astype("str")
    arr = pa.array(text.array)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _parse_numbers(series: pd.Series, *, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (NaN where absent or bad) and a mask of the cells that are not numbers.

    With ``integer``, a column of whole numbers comes back as exact ``int64``.
    """
    n = len(series)
    if pd.api.types.is_numeric_dtype(series.dtype) and not isinstance(
        series.dtype, pd.CategoricalDtype
    ):
        if integer and pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
            return series.to_numpy(dtype="int64"), np.zeros(n, dtype=bool)
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.isinf(values)
    arr = _arrow_strings(series)
    blank_as_null = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    for target in (pa.int64(), pa.float64()) if integer else (pa.float64(),):
        try:
            cast = pc.cast(blank_as_null, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if target == pa.int64() and cast.null_count == 0:
            return cast.to_numpy(), np.zeros(n, dtype=bool)
        values = pc.cast(cast, pa.float64()).to_numpy()
        return values, np.isinf(values)
    # Slow path, only when some cell is not a plain number: classify every cell.
    trimmed = pc.utf8_trim_whitespace(arr)
    absent = pc.fill_null(pc.is_in(pc.utf8_lower(trimmed), value_set=_NULL_TOKENS), True)
    numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False)
    values = pc.cast(
        pc.if_else(numeric, trimmed, pa.scalar(None, arr.type)), pa.float64()
    ).to_numpy()
    bad = ~np.asarray(numeric) & ~np.asarray(absent)
    return values, bad | np.isinf(values)


def _parse_times(series: pd.Series, unit: str | None, label: str, source: str) -> np.ndarray:
    """UTC nanoseconds since the epoch as ``int64``; unparseable or missing -> NaT's value."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
        series.dtype
    ):
        return _nanos(parse_timestamps(series))
    if unit is not None:
        return _epoch_nanos(series, unit)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        raise ValueError(
            f"{label}: column {source!r} holds numbers, not ISO 8601 times; set "
            f"timestamp_unit ({', '.join(TIMESTAMP_UNITS)}) in the mapping"
        )
    arr = _arrow_strings(series)
    # Only texts of the contract's pattern are times (Arrow and pandas would also read
    # "2024", "+02" offsets or, pandas, "now"); the rest become null, so quarantined.
    is_time = is_timestamp_text(arr)
    arr = pc.if_else(pa.array(is_time), arr, pa.scalar(None, arr.type))
    # Arrow parses a column of zoned ISO times, or one of naive ISO times, several
    # times faster than pandas; a column that mixes them goes to the contract's
    # parser, which reads every text of the pattern to the same instant. Arrow refuses
    # naive texts cast to a zoned type only after a slow pass (seconds for millions of
    # rows), so the kind of the first time is tried first: in a text of the pattern,
    # "Z", "+" or "-" after the date can only start an offset.
    first = str(arr[int(np.argmax(is_time))]) if is_time.any() else ""
    zoned, naive = pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")
    targets = (zoned, naive) if any(c in first[10:] for c in "Z+-") else (naive, zoned)
    for target in targets:
        try:
            parsed = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        nanos = pc.cast(parsed, pa.int64())
        return (pc.fill_null(nanos, _NAT) if nanos.null_count else nanos).to_numpy()
    return _nanos(parse_timestamps(arr.to_pandas(types_mapper=None)))


def _nanos(times: pd.Series) -> np.ndarray:
    values = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return values.view(np.int64)


def _epoch_nanos(series: pd.Series, unit: str) -> np.ndarray:
    scale = TIMESTAMP_UNITS[unit]
    values, _ = _parse_numbers(series, integer=True)
    limit = np.iinfo(np.int64).max // scale
    if values.dtype == np.int64:
        ok = (values > -limit) & (values < limit)
        return np.where(ok, values * scale, _NAT)
    ok = np.isfinite(values) & (np.abs(values) < limit)
    return np.where(ok, np.round(np.where(ok, values, 0) * scale), _NAT).astype(np.int64)
