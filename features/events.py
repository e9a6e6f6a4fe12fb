"""Load event logs onto the event data contract (docs/events.md), quarantining bad rows.

:func:`load_events` reads a CSV, Parquet or JSON Lines file, applies an optional
:class:`EventMapping` (column names and event names), checks every row and returns a
canonical event frame (see :mod:`features.contract`) with a :class:`LoadSummary`.
Rows that fail a check are never dropped silently: they go to a quarantine CSV with
their row number and reason, and are counted in the summary.

:func:`validate_events` is the in-memory core, so a DataFrame that arrives by another
route (the HTTP API) goes through exactly the same checks.

Everything is vectorised: labels (customer ids, event names) are checked once per
distinct value and broadcast through integer codes, times and amounts are parsed by
pyarrow where the whole column allows it.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from customer_lifecycle.features.contract import (
    AMOUNT,
    CANONICAL_EVENT_TYPES,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TYPE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    parse_timestamps,
    to_canonical_frame,
)
from customer_lifecycle.features.io import write_table

#: Quarantine reasons, in the order they are checked; a row failing several checks
#: is reported under the first.
QUARANTINE_REASONS: tuple[str, ...] = (
    "missing_customer_id",
    "missing_event_type",
    "unparseable_timestamp",
    "unparseable_amount",
    "negative_purchase_amount",
    "unknown_event_type",
)

#: Shipped mapping presets, loadable by name with :func:`load_mapping`.
PRESETS: tuple[str, ...] = ("ga4", "segment")

#: Units accepted for epoch-number timestamps, with their length in nanoseconds.
TIMESTAMP_UNITS: dict[str, int] = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

UnknownEvents = Literal["strict", "lenient"]

_CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
_MAPPING_KEYS = ("columns", "event_types", "timestamp_unit")
_FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SUPPORTED = ".csv, .csv.gz, .parquet or .pq (a file or a directory), .jsonl, .ndjson"
# Spellings of "no value" that spreadsheet and R/pandas exports write into amount cells.
_NULL_TOKENS = pa.array(["", "na", "n/a", "nan", "null", "none"])
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NAT = np.iinfo(np.int64).min


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class EventMapping:
    """How a source log's columns and event names map onto the contract.

    Parameters
    ----------
    columns
        Contract column -> source column name, e.g. ``{"customer_id": "user_id"}``.
        Contract columns left out are looked up under their own name.
    event_types
        Source event name -> canonical event type, e.g. ``{"view_item": "product_view"}``.
        Names left out pass through unchanged.
    timestamp_unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` when the source time is an epoch number
        (GA4's ``event_timestamp`` is microseconds); ``None`` for ISO 8601 strings.

    Raises
    ------
    ValueError
        On an unknown contract column, an event type that is not canonical, or an
        unknown time unit; the message is one line and suggests the closest name.
    """

    columns: dict[str, str] = field(default_factory=dict)
    event_types: dict[str, str] = field(default_factory=dict)
    timestamp_unit: str | None = None

    def __post_init__(self) -> None:
        for column in self.columns:
            if column not in _CONTRACT_COLUMNS:
                hint = _suggest(column, _CONTRACT_COLUMNS)
                raise ValueError(
                    f"columns: {column!r} is not a contract column{hint}"
                    f" (contract columns: {', '.join(_CONTRACT_COLUMNS)})"
                )
        for source, target in self.event_types.items():
            if target not in CANONICAL_EVENT_TYPES:
                raise ValueError(
                    f"event_types: {source!r} is mapped to {target!r}, which is not a canonical "
                    f"event type{_suggest(str(target), CANONICAL_EVENT_TYPES)}"
                )
        if self.timestamp_unit is not None and self.timestamp_unit not in TIMESTAMP_UNITS:
            hint = _suggest(str(self.timestamp_unit), list(TIMESTAMP_UNITS))
            raise ValueError(
                f"timestamp_unit {self.timestamp_unit!r} is not one of "
                f"{', '.join(TIMESTAMP_UNITS)}{hint}"
            )

    def source_column(self, column: str) -> str:
        """Return the source column name that feeds contract ``column``."""
        return self.columns.get(column, column)


def load_mapping(spec: str | Path | None) -> EventMapping | None:
    """Load a mapping: ``None`` gives ``None``, a preset name or a YAML file path a mapping.

    Parameters
    ----------
    spec
        ``None``; ``"ga4"`` or ``"segment"`` for a shipped preset; otherwise the path of a
        YAML file with the keys ``columns``, ``event_types`` and optionally
        ``timestamp_unit`` (see ``docs/events.md``).

    Returns
    -------
    EventMapping or None

    Raises
    ------
    ValueError
        With a one-line message naming the file and the problem: unreadable file, YAML
        syntax error, not a mapping, unknown key, unknown contract column, non-canonical
        event type or unknown time unit.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.lower() in PRESETS:
        name = spec.lower()
        text = (
            resources.files("customer_lifecycle.features.presets")
            .joinpath(f"{name}.yaml")
            .read_text()
        )
        source = f"preset {name!r}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"mapping file {path} does not exist (presets are {', '.join(PRESETS)})"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read mapping file {path}: {one_line(exc)}") from None
        source = f"mapping file {path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ValueError(f"{source} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{source} must be a YAML mapping with the keys {', '.join(_MAPPING_KEYS)}"
        )
    for key in data:
        if key not in _MAPPING_KEYS:
            raise ValueError(
                f"{source} has unknown key {key!r}{_suggest(str(key), _MAPPING_KEYS)}"
                f" (valid keys: {', '.join(_MAPPING_KEYS)})"
            )
    columns = _string_dict(data.get("columns"), "columns", source)
    event_types = _string_dict(data.get("event_types"), "event_types", source)
    unit = data.get("timestamp_unit")
    try:
        return EventMapping(
            columns=columns,
            event_types=event_types,
            timestamp_unit=None if unit is None else str(unit),
        )
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _string_dict(value: object, key: str, source: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {key!r} must be a mapping of name: name")
    out: dict[str, str] = {}
    for k, v in value.items():
        if v is None or isinstance(v, dict | list) or str(v).strip() == "":
            raise ValueError(f"{source}: {key}.{k} must be a name, got {v!r}")
        out[str(k)] = str(v)
    return out


@dataclass
class LoadSummary:
    """What happened to the rows of one load.

    Attributes
    ----------
    source
        The file (or ``"<frame>"``) the events came from.
    rows_read
        Data rows read; always ``rows_kept + sum(quarantined.values())``.
    rows_kept
        Rows in the returned canonical frame.
    quarantined
        Quarantine reason -> row count, only reasons that occurred.
    quarantine_path
        Where the quarantined rows were written, or ``None`` when none were.
    unknown_event_types
        Under the lenient policy: event types outside the canonical list that were kept
        under their own name -> row count.
    absent_columns
        Optional contract column -> source column the mapping names for it but the
        file does not have (the column is then left out of the frame).
    """

    source: str
    rows_read: int
    rows_kept: int
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine_path: Path | None = None
    unknown_event_types: dict[str, int] = field(default_factory=dict)
    absent_columns: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready values."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "quarantined": dict(self.quarantined),
            "quarantine_path": None if self.quarantine_path is None else str(self.quarantine_path),
            "unknown_event_types": dict(self.unknown_event_types),
            "absent_columns": dict(self.absent_columns),
        }

    def __str__(self) -> str:
        total = sum(self.quarantined.values())
        line = f"read {self.rows_read:,} rows from {self.source}: kept {self.rows_kept:,}"
        line += f", quarantined {total:,}"
        if total:
            line += f" ({_counts(self.quarantined)})"
        if self.quarantine_path is not None:
            line += f" -> {self.quarantine_path}"
        if self.unknown_event_types:
            kept = sum(self.unknown_event_types.values())
            line += f"; kept {kept:,} of unknown type ({_counts(self.unknown_event_types)})"
        for column, source in self.absent_columns.items():
            line += f"; no column {source!r} for {column}"
        return line


def _counts(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name}: {n:,}" for name, n in ordered)


def load_events(
    path: str | Path,
    *,
    mapping: EventMapping | None = None,
    unknown_events: UnknownEvents = "strict",
    quarantine_path: str | Path | None = None,
) -> tuple[pd.DataFrame, LoadSummary]:
    """Read an event log, check every row, and return a canonical event frame.

    Parameters
    ----------
    path
        A ``.csv`` / ``.csv.gz`` file, a ``.parquet`` / ``.pq`` file or a directory of
        Parquet files, or a ``.jsonl`` / ``.ndjson`` file (nested objects are
        flattened to dotted column names such as ``properties.total``).
    mapping
        Column and event-name mapping (see :func:`load_mapping`); ``None`` expects the
        contract's own names.
    unknown_events
        ``"strict"`` quarantines event types outside the canonical list; ``"lenient"``
        keeps them under their own name and counts them in the summary.
    quarantine_path
        Where to write quarantined rows (``.csv``, or ``.parquet``); default
        ``<stem>.quarantine.csv`` beside ``path``. Written, atomically, only when at
        least one row is quarantined.

    Returns
    -------
    events : pandas.DataFrame
        Canonical event frame (:mod:`features.contract`), original row order, RangeIndex.
    summary : LoadSummary
        Row counts by outcome and the quarantine file's path.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        On an unsupported extension, an unreadable or empty file, or a missing required
        column (named, with its source name when it came from ``mapping``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"events file {path} does not exist")
    fmt = event_format(path)
    label = f"events file {path}"
    names = {
        c: (mapping.source_column(c) if mapping else c) for c in (CUSTOMER_ID, EVENT_TYPE, CHANNEL)
    }
    frame = _read_frame(path, fmt, label, label_columns=set(names.values()), mapping=mapping)
    clean, quarantine, summary = _validate(
        frame,
        mapping=mapping,
        unknown_events=unknown_events,
        source=str(path),
        row_offset=0,
        label=label,
    )
    if len(quarantine):
        target = (
            Path(quarantine_path) if quarantine_path is not None else default_quarantine_path(path)
        )
        write_table(quarantine, target)
        summary = replace(summary, quarantine_path=target)
    return clean, summary


def validate_events(
    frame: pd.DataFrame,
    *,
    mapping: EventMapping | None = None,
    unknown_events: UnknownEvents = "strict",
    source: str = "<frame>",
    row_offset: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, LoadSummary]:
    """Check the rows of an in-memory event table; the core of :func:`load_events`.

    Parameters
    ----------
    frame
        Source rows under their source column names; it is not modified.
    mapping, unknown_events
        As for :func:`load_events`.
    source
        Name used in the summary and in error messages.
    row_offset
        Added to the 1-based position of each row to give its ``row_number`` (for
        callers that validate a file in chunks).

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
    return _validate(
        frame,
        mapping=mapping,
        unknown_events=unknown_events,
        source=source,
        row_offset=row_offset,
        label=f"events {source}",
    )


# --------------------------------------------------------------------------- reading


def event_format(path: Path) -> str:
    """``csv``, ``parquet`` or ``jsonl`` from an events file name (a directory is Parquet)."""
    if path.is_dir():
        return "parquet"
    name = path.name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise ValueError(f"cannot read events file {path}: supported formats are {_SUPPORTED}")


def default_quarantine_path(path: Path) -> Path:
    """``<stem>.quarantine.csv`` beside an events file."""
    name = path.name
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return path.parent / f"{name}.quarantine.csv"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_frame(
    path: Path, fmt: str, label: str, *, label_columns: set[str], mapping: EventMapping | None
) -> pd.DataFrame:
    try:
        if fmt == "csv":
            table = _read_csv(path, label, label_columns)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            table = _read_jsonl(path, label)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {label}: {one_line(exc)}") from None
    if isinstance(table, pd.DataFrame):
        frame = table
    else:
        if table.num_rows == 0:
            raise ValueError(f"{label} has no rows")
        # Dictionary-encode label columns in Arrow: pandas then receives categoricals
        # and every later label check runs once per distinct value.
        for i, name in enumerate(table.column_names):
            col = table.column(i)
            if name in label_columns and (
                pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            ):
                table = table.set_column(i, name, pc.dictionary_encode(col))
        frame = table.to_pandas(split_blocks=True)
    if len(frame) == 0:
        raise ValueError(f"{label} has no rows")
    return frame


def _read_csv(path: Path, label: str, label_columns: set[str]) -> pa.Table:
    import pyarrow.csv as pcsv

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{label} has no rows")
    # Every column is read as text: ids such as "007" keep their zeros, and the
    # quarantine file shows cells exactly as the source wrote them.
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {name: (dictionary if name in label_columns else pa.string()) for name in header}
    return pcsv.read_csv(
        path,
        # Large blocks keep the number of per-block dictionaries that pandas must
        # unify small; that unification dominates with the default 1 MiB blocks.
        read_options=pcsv.ReadOptions(block_size=16 << 20),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )


def _read_jsonl(path: Path, label: str) -> pa.Table | pd.DataFrame:
    import pyarrow.json as pjson

    try:
        table = pjson.read_json(path)
    except pa.ArrowInvalid:
        # Arrow needs one type per field; a log that mixes them (ids as numbers and
        # strings, an amount written as text) is read by the standard library instead.
        return _read_jsonl_python(path, label)
    while any(pa.types.is_struct(t) for t in table.schema.types):
        table = table.flatten()
    return table


def json_records(
    lines: Iterable[str | bytes], *, first_line: int = 1, label: str
) -> list[dict[str, Any]]:
    """Parse JSON Lines into objects, skipping blank lines.

    Raises ``ValueError`` naming ``label`` and the line number of the first line that is
    not JSON or not a JSON object.
    """
    records = []
    for line_number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{label} line {line_number} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{label} line {line_number} is not a JSON object")
        records.append(record)
    return records


def _read_jsonl_python(path: Path, label: str) -> pd.DataFrame:
    with open(path, encoding="utf-8-sig") as fh:
        records = json_records(fh, label=label)
    if not records:
        raise ValueError(f"{label} has no rows")
    return pd.json_normalize(records)


# ------------------------------------------------------------------------ validation


def _validate(
    frame: pd.DataFrame,
    *,
    mapping: EventMapping | None,
    unknown_events: str,
    source: str,
    row_offset: int,
    label: str,
) -> tuple[pd.DataFrame, pd.DataFrame, LoadSummary]:
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
        checks += [amount_bad, is_purchase & (amount < 0)]
        is_refund = _broadcast(ev_labels == "refund", ev_codes, missing=False)
        # Refunds arrive as +x or -x depending on the source; store the magnitude.
        amount = np.where(is_refund, np.abs(amount), amount)
    else:
        checks += [None, None]
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
    found = ", ".join(map(str, list(frame.columns)[:12])) + (", ..." if frame.shape[1] > 12 else "")
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
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    values = pd.Index(uniques)
    if pd.api.types.is_float_dtype(values.dtype) and np.all(np.mod(values.to_numpy(), 1) == 0):
        # Integer ids that pandas widened to float because some were missing.
        values = values.astype("int64")
    return codes.astype(np.int32, copy=False), np.asarray(values.astype(str), dtype=object)


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
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    # Arrow parses a column of zoned ISO times, or one of naive ISO times, several
    # times faster than pandas; anything else (mixed, or with bad cells) goes to the
    # contract's parser, which defines the semantics.
    for target in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):
        try:
            parsed = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        nanos = pc.cast(parsed, pa.int64())
        return (pc.fill_null(nanos, _NAT) if nanos.null_count else nanos).to_numpy()
    return _nanos(parse_timestamps(series))


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
