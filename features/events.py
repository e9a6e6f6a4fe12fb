"""Load event logs onto the event data contract (docs/events.md), quarantining bad rows.

:func:`load_events` reads a CSV, Parquet or JSON Lines file (:mod:`features.readers`),
applies an optional :class:`~features.mapping.EventMapping` (column names and event
names), checks every row (:mod:`features.validation`) and returns a canonical event
frame (see :mod:`features.contract`) with a :class:`~features.summary.LoadSummary`.
Rows that fail a check are never dropped silently: they go to a quarantine CSV with
their row number and reason, and are counted in the summary.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from customer_lifecycle.features.contract import AMOUNT, CHANNEL, CUSTOMER_ID, EVENT_TYPE
from customer_lifecycle.features.mapping import EventMapping, refuse_lost_amounts
from customer_lifecycle.features.paths import refuse_overlaps
from customer_lifecycle.features.readers import EVENT_FORMATS, event_format, read_event_frame
from customer_lifecycle.features.sink import write_atomic
from customer_lifecycle.features.summary import LoadSummary
from customer_lifecycle.features.validation import UnknownEvents, validate_events


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
        Column and event-name mapping (see :func:`features.mapping.load_mapping`);
        ``None`` expects the contract's own names. Nested fields and key/value
        records it names are resolved from Parquet structs and lists and from JSON
        objects and arrays.
    unknown_events
        ``"strict"`` quarantines event types outside the canonical list; ``"lenient"``
        keeps them under their own name and counts them in the summary.
    quarantine_path
        Where to write quarantined rows (``.csv``, or ``.parquet``); default
        ``<stem>.quarantine.csv`` beside ``path``. Written, atomically, only when at
        least one row is quarantined. It may not be the events file (or lie inside it).

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
        On an unsupported extension, an unreadable or empty file, a missing required
        column (named, with its source name when it came from ``mapping``), a mapped
        ``amount`` source that lost every purchase amount (unless the mapping allows
        it, :func:`features.mapping.refuse_lost_amounts`), or a quarantine path that
        would overwrite the events (nothing is read or written).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"events file {path} does not exist")
    target = Path(quarantine_path) if quarantine_path is not None else default_quarantine_path(path)
    refuse_overlaps([("the events file", path)], [("the quarantine file", target)])
    fmt = event_format(path)
    label = f"events file {path}"
    names = {
        c: (mapping.source_column(c) if mapping else c) for c in (CUSTOMER_ID, EVENT_TYPE, CHANNEL)
    }
    frame = read_event_frame(path, fmt, label, label_columns=set(names.values()), mapping=mapping)
    clean, quarantine, summary = validate_events(
        frame,
        mapping=mapping,
        unknown_events=unknown_events,
        source=str(path),
        row_offset=0,
        label=label,
    )
    refuse_lost_amounts(mapping, **amounts_found(clean, summary), label=label)
    if len(quarantine):
        write_atomic(quarantine, target)
        summary = replace(summary, quarantine_path=target)
    return clean, summary


def amounts_found(events: pd.DataFrame, summary: LoadSummary) -> dict[str, Any]:
    """Purchases among ``events``, those with an amount, and whether the amount source was
    missing: the arguments of :func:`features.mapping.refuse_lost_amounts`."""
    purchase = (events[EVENT_TYPE] == "purchase").to_numpy()
    with_amount = 0
    if AMOUNT in events.columns:
        with_amount = int(events[AMOUNT].notna().to_numpy()[purchase].sum())
    return {
        "purchases": int(purchase.sum()),
        "with_amount": with_amount,
        "missing": AMOUNT in summary.absent_columns or AMOUNT not in events.columns,
    }


def default_quarantine_path(path: Path) -> Path:
    """``<stem>.quarantine.csv`` beside an events file."""
    name = path.name
    for ext in sorted(EVENT_FORMATS, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return path.parent / f"{name}.quarantine.csv"
