"""Tests for the row checks (features.validation): required columns, quarantine reasons, times."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from customer_lifecycle.features.contract import (
    TIMESTAMP_PATTERN,
    is_canonical_frame,
    is_timestamp_text,
    parse_as_of,
)
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import EventMapping
from customer_lifecycle.features.validation import QUARANTINE_REASONS, validate_events
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.features.event_files import (
    ROWS,
    one_line,
    write_csv,
)


def test_refund_amounts_are_stored_as_magnitudes(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert events.loc[events["event_type"] == "refund", "amount"].tolist() == [5.5]
    assert events.loc[events["event_type"] == "purchase", "amount"].tolist() == [19.99]


@pytest.mark.parametrize(
    "column",
    [
        "customer_id",  # no id column
        "timestamp",  # no time column
        "event_type",  # no event column
    ],
)
def test_missing_required_column_is_named(tmp_path, column):
    rows = [{k: v for k, v in row.items() if k != column} for row in ROWS]
    with pytest.raises(ValueError) as exc:
        load_events(write_csv(tmp_path / "events.csv", rows))
    message = one_line(exc)
    assert f"'{column}'" in message and "events.csv" in message


def test_missing_mapped_column_names_the_source_column(tmp_path):
    mapping = EventMapping(columns={"customer_id": "user_id"})
    with pytest.raises(ValueError) as exc:
        load_events(write_csv(tmp_path / "events.csv", ROWS), mapping=mapping)
    message = one_line(exc)
    assert "'user_id'" in message and "'customer_id'" in message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"customer_id": ""}, "missing_customer_id"),  # blank id
        ({"customer_id": "   "}, "missing_customer_id"),  # whitespace-only id
        ({"event_type": ""}, "missing_event_type"),  # blank event
        ({"timestamp": "2024-02-30T00:00:00Z"}, "unparseable_timestamp"),  # no such day
        ({"timestamp": "9999-01-01T00:00:00Z"}, "unparseable_timestamp"),  # past year 2262
        ({"amount": "12,50"}, "unparseable_amount"),  # decimal comma is not a number
        ({"event_type": "purchase", "amount": "-3"}, "negative_purchase_amount"),
        ({"event_type": "teleport"}, "unknown_event_type"),  # not canonical, strict policy
        # Several failures on one row: the first in the documented order is reported.
        (
            {"customer_id": "", "timestamp": "never", "event_type": "teleport"},
            "missing_customer_id",
        ),
        ({"timestamp": "never", "amount": "abc"}, "unparseable_timestamp"),
    ],
)
def test_bad_rows_are_quarantined_with_their_reason(change, reason):
    rows = [dict(r) for r in ROWS]
    rows[2].update(change)
    frame = pd.DataFrame(rows, dtype="str")
    events, quarantine, summary = validate_events(frame, row_offset=100)
    assert summary.quarantined == {reason: 1}
    assert quarantine["row_number"].tolist() == [103]
    assert quarantine["reason"].tolist() == [reason]
    assert len(events) == len(ROWS) - 1


@pytest.mark.parametrize(
    "amount",
    [
        "",  # blank
        "NA",  # R's missing value
        " n/a ",  # spreadsheet spelling with spaces
        "null",  # JSON-ish spelling
    ],
)
def test_absent_amount_spellings_are_not_errors(amount):
    rows = [dict(r) for r in ROWS]
    rows[0]["amount"] = amount
    rows[3]["amount"] = "oops"  # forces the cell-by-cell amount parser
    events, _, summary = validate_events(pd.DataFrame(rows, dtype="str"))
    assert summary.quarantined == {"unparseable_amount": 1}
    assert np.isnan(events["amount"].iloc[0])


def test_bad_unknown_events_policy_is_refused():
    with pytest.raises(ValueError, match="strict"):
        validate_events(pd.DataFrame(ROWS), unknown_events="loose")  # type: ignore[arg-type]


def test_validate_events_leaves_its_input_alone():
    frame = pd.DataFrame(ROWS, dtype="str")
    before = frame.copy()
    validate_events(frame, mapping=EventMapping(event_types={"login": "email_open"}))
    pd.testing.assert_frame_equal(frame, before)


@pytest.mark.parametrize(
    "times",
    [
        # All zoned: the fast Arrow parser.
        ["2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z", "2024-01-01T03:00:00-05:00"],
        # Zoned and naive mixed: the contract's parser; naive is UTC.
        ["2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z", "2024-01-01T08:00:00"],
        # All naive: the fast parser, taken as UTC.
        ["2024-01-01T08:00:00", "2024-01-01 08:00:00", "2024-01-01T08:00:00.000"],
    ],
)
def test_time_zones_are_converted_to_utc(tmp_path, times):
    rows = [{"customer_id": "a", "timestamp": t, "event_type": "login"} for t in times]
    events, _ = load_events(write_csv(tmp_path / "events.csv", rows))
    expected = pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["timestamp"].tolist() == [expected] * 3


@pytest.mark.parametrize(
    ("unit", "values"),
    [
        ("s", ["1704096000", "1704096000.5"]),  # seconds, one with a fraction
        ("ms", ["1704096000000", "1704096000500"]),  # milliseconds
        ("us", ["1704096000000000", "1704096000500000"]),  # microseconds, as GA4 writes
    ],
)
def test_epoch_numbers_follow_the_mapping_unit(unit, values):
    frame = pd.DataFrame(
        {"customer_id": ["a", "a", "a"], "timestamp": [*values, "soon"], "event_type": "login"}
    )
    events, quarantine, _ = validate_events(frame, mapping=EventMapping(timestamp_unit=unit))
    start = pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["timestamp"].tolist() == [start, start + pd.Timedelta("500ms")]
    assert quarantine["reason"].tolist() == ["unparseable_timestamp"]


def test_numeric_times_without_a_unit_are_refused():
    frame = pd.DataFrame({"customer_id": ["a"], "timestamp": [1704096000], "event_type": "login"})
    with pytest.raises(ValueError, match="timestamp_unit"):
        validate_events(frame)


def test_native_datetimes_in_a_frame_are_accepted():
    times = pd.to_datetime(["2024-01-01 10:00"]).tz_localize("Europe/Berlin")
    frame = pd.DataFrame({"customer_id": ["a"], "timestamp": times, "event_type": ["login"]})
    events, _, _ = validate_events(frame)
    assert events["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T09:00:00", tz="UTC")


# Beside the text under test: one time alone takes Arrow's parser; beside a zoned and a
# naive time the column is mixed and takes the contract's parser (pandas).
PARSERS = {
    "arrow": [],
    "pandas": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00"],
}


def _read_time(text: str, parser: str) -> pd.Timestamp | None:
    """The instant the loader reads from ``text``, or None if the row is quarantined."""
    times = [text, *PARSERS[parser]]
    frame = pd.DataFrame({"customer_id": "a", "timestamp": times, "event_type": "login"})
    events, quarantine, summary = validate_events(frame)
    assert len(events) + len(quarantine) == len(times)
    if len(quarantine) and quarantine["row_number"].iloc[0] == 1:
        assert summary.quarantined == {"unparseable_timestamp": 1}
        return None
    return events["timestamp"].iloc[0]


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(
    "text",
    [
        "now",  # pandas reads it as the time of reading
        "today",  # midnight of the day of reading
        "2024/06/01",  # slashes are not ISO 8601's date separator
        "20240601",  # basic (compact) form
        "2024",  # a year alone
        "2024-06",  # a month alone
        "2024-06-01T10",  # an hour alone
        "2024-06-01T10:00+02",  # an offset in hours alone
        "2024-06-01T10:00:00+19:00",  # an offset beyond 18 hours (java.time, Spark)
        "2024-06-01T10:00:00 UTC",  # a zone name
        " 2024-06-01",  # a leading space
        "2024-06-01 ",  # a trailing space
        "2024-06-01\n",  # a trailing line break
        "2024-06-01T10:00:00.1234567891Z",  # ten fraction digits: below a nanosecond
        "1677-12-31",  # before 1678: an offset could leave the nanosecond range
        "2262-01-01",  # after 2261: likewise
        "2023-02-29",  # no such day (2023 is not a leap year)
        "2024-6-1",  # month and day need two digits
        "2024-06-01T10:00:00z",  # lower-case zone
        "1704096000",  # epoch seconds: only with a mapping's timestamp_unit
        "\u0662\u0660\u0662\u0664-06-01",  # Arabic-Indic digits are digits to Python's re
    ],
)
def test_time_texts_that_are_not_iso_8601_are_quarantined(text, parser):
    assert _read_time(text, parser) is None


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01", "2024-06-01T00:00:00"),  # a date: midnight UTC
        ("2024-02-29", "2024-02-29T00:00:00"),  # a leap day
        ("2024-06-01T10:00", "2024-06-01T10:00:00"),  # hours and minutes, naive: UTC
        ("2024-06-01 10:00:30", "2024-06-01T10:00:30"),  # a space instead of T
        ("2024-06-01T10:00:30.5", "2024-06-01T10:00:30.5"),  # a fraction
        ("2024-06-01T10:00:30.123456789", "2024-06-01T10:00:30.123456789"),  # nanoseconds
        ("2024-06-01T10:00Z", "2024-06-01T10:00:00"),  # Z without seconds
        ("2024-06-01T10:00:30+02:00", "2024-06-01T08:00:30"),  # +hh:mm
        ("2024-06-01T10:00:30-0230", "2024-06-01T12:30:30"),  # -hhmm
        ("1678-01-01T00:00+18:00", "1677-12-31T06:00:00"),  # the earliest, largest offset
        ("2261-12-31T23:59:59.999999999-18:00", "2262-01-01T17:59:59.999999999"),  # latest
    ],
)
def test_iso_8601_time_texts_are_read_as_utc(text, expected, parser):
    assert _read_time(text, parser) == pd.Timestamp(expected, tz="UTC")


@settings(max_examples=200, deadline=None)
@given(
    text=st.from_regex(TIMESTAMP_PATTERN, fullmatch=True)
    | st.text(alphabet="0123456789-:T Zz+.\n", max_size=30)
    | st.text(max_size=30)
)
def test_the_time_pattern_means_the_same_to_arrow_and_to_python(text):
    # The loader matches with RE2 (pyarrow), the API with Python's re: one pattern.
    python = re.fullmatch(TIMESTAMP_PATTERN, text) is not None
    assert is_timestamp_text(pa.array([text]))[0] == python


CELLS: dict[str, list[str | None]] = {
    "customer_id": ["007", "b", "", " ", None],
    "timestamp": ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+02:00", "2024-01-01", "x", ""],
    "event_type": ["purchase", "refund", "login", "teleport", "", None],
    "amount": ["1.5", "-2", "", "abc", "NA"],
}


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CELLS.items()}),
        min_size=1,
        max_size=30,
    ),
    lenient=st.booleans(),
)
# A kept negative refund: the case the money assertion below is about.
@example(
    rows=[{"customer_id": "b", "timestamp": "2024-01-01", "event_type": "refund", "amount": "-2"}],
    lenient=False,
)
def test_every_row_is_kept_or_quarantined_exactly_once(rows, lenient):
    frame = pd.DataFrame(rows)
    events, quarantine, summary = validate_events(
        frame, unknown_events="lenient" if lenient else "strict"
    )
    assert summary.rows_read == len(rows)
    assert summary.rows_read == summary.rows_kept + sum(summary.quarantined.values())
    assert len(events) == summary.rows_kept and len(quarantine) == sum(summary.quarantined.values())
    assert set(quarantine["reason"]) <= set(QUARANTINE_REASONS)
    assert quarantine["row_number"].is_unique
    assert is_canonical_frame(events)
    if len(events) and "amount" in events:
        # Money left in the frame is never a negative purchase or a negative refund.
        money = events[events["event_type"].isin(["purchase", "refund"])]["amount"]
        assert not (money < 0).any()


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1.7e308", "amount_out_of_range"),  # two of these summed to inf
        ("-2e15", "amount_out_of_range"),  # a refund as large
        ("1e400", "unparseable_amount"),  # not a float64 at all
        ("1e15", None),  # the largest accepted magnitude
    ],
)
def test_amounts_too_large_to_add_up_are_quarantined(amount, reason):
    rows = [dict(r) for r in ROWS]
    rows[1]["amount"] = amount
    _, _, summary = validate_events(pd.DataFrame(rows, dtype="str"))
    assert summary.quarantined == ({reason: 1} if reason else {})


def test_two_huge_amounts_of_one_customer_give_finite_features():
    from customer_lifecycle.features.engine import build_features

    rows = [dict(r) for r in ROWS]
    rows.append({**rows[1], "amount": "1.7e308"})
    rows.append({**rows[1], "amount": "1.7e308", "timestamp": "2024-01-02T09:00:00Z"})
    events, quarantine, summary = validate_events(pd.DataFrame(rows, dtype="str"))
    assert summary.quarantined == {"amount_out_of_range": 2}
    assert quarantine["row_number"].tolist() == [5, 6]
    features = build_features(events, as_of="2024-02-01").to_numpy()
    assert not np.isinf(features).any()


@settings(max_examples=40, deadline=None)
@given(
    amounts=st.lists(
        st.one_of(st.floats().map(repr), st.sampled_from(["1e15", "-1e15", "1.7e308", "9e14"])),
        min_size=1,
        max_size=40,
    ),
    customers=st.integers(min_value=1, max_value=3),
)
def test_features_of_accepted_rows_are_never_infinite(amounts, customers):
    # a law of the engine: whatever amounts a log holds, every row the checks accept
    # gives finite features (NaN only where a feature is undefined)
    from customer_lifecycle.features.engine import build_features

    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i % customers}" for i in range(len(amounts))],
            "timestamp": [f"2024-01-{1 + i % 28:02d}T00:00:00Z" for i in range(len(amounts))],
            "event_type": [("purchase", "refund")[i % 2] for i in range(len(amounts))],
            "amount": amounts,
        }
    )
    events, _, _ = validate_events(frame)
    if len(events):
        assert not np.isinf(build_features(events, as_of="2024-03-01").to_numpy()).any()


def test_float_ids_beyond_exact_integers_keep_their_value():
    # ids widened to float by a missing one become integers again, but only where a
    # float holds the integer exactly: 1e20 cast to int64 was another customer's number
    frame = pd.DataFrame(
        {
            "customer_id": [1e20, np.nan, 3.0],
            "timestamp": ["2024-01-01T00:00:00Z"] * 3,
            "event_type": ["login"] * 3,
        }
    )
    events, _, _ = validate_events(frame)
    assert events["customer_id"].tolist() == ["1e+20", "3.0"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-12-31", "2024-12-31T00:00Z"),  # a date: midnight UTC
        ("2024-12-31T18:00+02:00", "2024-12-31T16:00Z"),  # a time with an offset
        ("now", None),  # a time that moves: never an as_of
        ("today", None),  # the same
        ("20241231", None),  # compact form, refused by the file contract too
        ("2024", None),  # a year is not a time
    ],
)
def test_as_of_texts_follow_the_event_contract(text: str, expected: str | None) -> None:
    if expected is not None:
        assert parse_as_of(text) == pd.Timestamp(expected)
    else:
        with pytest.raises(ValueError, match="is not an ISO 8601 time"):
            parse_as_of(text)
