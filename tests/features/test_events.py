"""Tests for the event loader (docs/events.md): formats, mapping, quarantine, summary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES, is_canonical_frame
from customer_lifecycle.features.events import (
    QUARANTINE_REASONS,
    EventMapping,
    LoadSummary,
    load_events,
    load_mapping,
    validate_events,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

ROWS = [
    {
        "customer_id": "007",
        "timestamp": "2024-01-01T10:00:00+02:00",
        "event_type": "page_view",
        "amount": "",
        "channel": "web",
        "note": "extra column, dropped",
    },
    {
        "customer_id": "0042",
        "timestamp": "2024-01-02T08:30:00Z",
        "event_type": "purchase",
        "amount": "19.99",
        "channel": "app",
        "note": "x",
    },
    {
        "customer_id": "007",
        "timestamp": "2024-01-03T12:00:00",
        "event_type": "refund",
        "amount": "-5.5",
        "channel": "",
        "note": "y",
    },
    {
        "customer_id": "c-3",
        "timestamp": "2024-01-04T00:00:00.250Z",
        "event_type": "login",
        "amount": "",
        "channel": "web",
        "note": "z",
    },
]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows, dtype="str").to_csv(path, index=False)
    return path


def write_csv_gz(path: Path, rows: list[dict[str, str]]) -> Path:
    text = pd.DataFrame(rows, dtype="str").to_csv(index=False)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _typed_table(rows: list[dict[str, str]]) -> pa.Table:
    # Parquet and JSON carry real numbers; blank amounts become nulls.
    frame = pd.DataFrame(rows, dtype="str")
    frame["amount"] = pd.to_numeric(frame["amount"].replace("", None))
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    pq.write_table(_typed_table(rows), path)
    return path


def write_parquet_dir(path: Path, rows: list[dict[str, str]]) -> Path:
    path.mkdir()
    table = _typed_table(rows)
    pq.write_table(table.slice(0, 2), path / "part-0.parquet")
    pq.write_table(table.slice(2), path / "part-1.parquet")
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    lines = []
    for row in rows:
        record: dict[str, object] = dict(row)
        if "amount" in record:
            record["amount"] = float(row["amount"]) if row["amount"] else None
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


# ------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("events.csv.gz", write_csv_gz),  # gzip-compressed CSV
        ("events.parquet", write_parquet),  # one Parquet file with typed columns
        ("events.pq", write_parquet),  # the short Parquet extension
        ("events_dir.parquet", write_parquet_dir),  # a directory of Parquet parts, in order
        ("events.jsonl", write_jsonl),  # JSON Lines with numeric amounts and nulls
        ("events.ndjson", write_jsonl),  # the other JSON Lines extension
    ],
)
def test_formats_give_the_same_canonical_frame(tmp_path, name, writer):
    expected, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    got, summary = load_events(writer(tmp_path / name, ROWS))
    pd.testing.assert_frame_equal(got, expected)
    assert summary.rows_read == summary.rows_kept == len(ROWS)


def test_frame_has_canonical_dtypes_and_order(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert is_canonical_frame(events)
    assert list(events.columns) == ["customer_id", "timestamp", "event_type", "amount", "channel"]
    assert str(events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert events["amount"].dtype == "float64"
    assert isinstance(events["channel"].dtype, pd.CategoricalDtype)
    assert isinstance(events.index, pd.RangeIndex)
    assert events["event_type"].tolist() == [r["event_type"] for r in ROWS]
    # A blank channel is missing, not a channel called "".
    assert events["channel"].isna().tolist() == [False, False, True, False]


def test_ids_with_leading_zeros_survive(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert events["customer_id"].tolist() == ["007", "0042", "007", "c-3"]
    assert list(events["customer_id"].cat.categories) == ["0042", "007", "c-3"]


def test_refund_amounts_are_stored_as_magnitudes(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert events.loc[events["event_type"] == "refund", "amount"].tolist() == [5.5]
    assert events.loc[events["event_type"] == "purchase", "amount"].tolist() == [19.99]


def test_jsonl_with_mixed_value_types_is_read(tmp_path):
    # Arrow needs one type per field; ids as numbers beside strings take the fallback.
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"customer_id": 7, "timestamp": "2024-01-01T00:00:00Z", "event_type": "login"}\n'
        "\n"
        '{"customer_id": "007", "timestamp": "2024-01-02T00:00:00Z", "event_type": "login"}\n'
    )
    events, summary = load_events(path)
    assert events["customer_id"].tolist() == ["7", "007"]
    assert summary.rows_kept == 2


@pytest.mark.parametrize(
    "name",
    [
        "events.txt",  # an unknown extension
        "events.json",  # plain JSON is not JSON Lines
    ],
)
def test_unknown_extension_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("customer_id,timestamp,event_type\n")
    with pytest.raises(ValueError) as exc:
        load_events(path)
    message = one_line(exc)
    assert ".csv" in message and ".parquet" in message and ".jsonl" in message


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_events(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    "content",
    [
        "",  # a zero-byte file
        "customer_id,timestamp,event_type\n",  # a header and no data
    ],
)
def test_empty_csv_is_refused(tmp_path, content):
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as exc:
        load_events(path)
    assert one_line(exc) == f"events file {path} has no rows"


@pytest.mark.parametrize(
    "suffix",
    [
        ".jsonl",  # a JSON Lines file with only blank lines
        ".parquet",  # a Parquet file with a schema and no rows
    ],
)
def test_empty_other_formats_are_refused(tmp_path, suffix):
    path = tmp_path / f"events{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n\n")
    else:
        pq.write_table(_typed_table(ROWS).slice(0, 0), path)
    with pytest.raises(ValueError, match="has no rows"):
        load_events(path)


# ---------------------------------------------------------------------- columns


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


def test_mapping_renames_columns_and_translates_events(tmp_path):
    rows = [
        {"uid": "1", "when": "2024-01-01T00:00:00Z", "name": "view_item", "customer_id": "9"},
        {"uid": "2", "when": "2024-01-01T00:00:00Z", "name": "pdp_view", "customer_id": "9"},
        {"uid": "3", "when": "2024-01-01T00:00:00Z", "name": "login", "customer_id": "9"},
    ]
    mapping = EventMapping(
        columns={"customer_id": "uid", "timestamp": "when", "event_type": "name"},
        event_types={"view_item": "product_view", "pdp_view": "product_view"},
    )
    events, _ = load_events(write_csv(tmp_path / "events.csv", rows), mapping=mapping)
    # The mapped column wins over a same-named extra column; unmapped names pass through;
    # two source names for one canonical type merge into one category.
    assert events["customer_id"].tolist() == ["1", "2", "3"]
    assert events["event_type"].tolist() == ["product_view", "product_view", "login"]
    assert list(events["event_type"].cat.categories) == ["login", "product_view"]
    assert list(events.columns) == ["customer_id", "timestamp", "event_type"]


def test_optional_column_named_by_mapping_but_absent_is_reported(tmp_path):
    mapping = EventMapping(columns={"amount": "revenue"})
    events, summary = load_events(write_csv(tmp_path / "events.csv", ROWS), mapping=mapping)
    assert "amount" not in events.columns
    assert summary.absent_columns == {"amount": "revenue"}
    assert "no column 'revenue' for amount" in str(summary)


# ---------------------------------------------------------------------- quarantine


def test_unparseable_timestamps_are_quarantined_with_row_numbers(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["timestamp"] = "yesterday"
    rows[3]["timestamp"] = ""
    path = write_csv(tmp_path / "events.csv", rows)
    events, summary = load_events(path)
    assert summary.quarantined == {"unparseable_timestamp": 2}
    assert summary.quarantine_path == tmp_path / "events.quarantine.csv"
    assert summary.quarantine_path is not None
    quarantine = pd.read_csv(summary.quarantine_path, dtype=str, keep_default_na=False)
    assert quarantine["row_number"].tolist() == ["2", "4"]
    assert quarantine["reason"].tolist() == ["unparseable_timestamp"] * 2
    # The source columns follow, as the source wrote them (zeros and extras included).
    assert list(quarantine.columns[2:]) == list(ROWS[0])
    assert quarantine["customer_id"].tolist() == ["0042", "c-3"]
    assert quarantine["timestamp"].tolist() == ["yesterday", ""]
    assert events["customer_id"].tolist() == ["007", "007"]


def test_no_quarantine_file_when_every_row_is_good(tmp_path):
    _, summary = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert summary.quarantine_path is None
    assert not (tmp_path / "events.quarantine.csv").exists()


def test_quarantine_path_can_be_chosen(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["customer_id"] = ""
    target = tmp_path / "bad" / "rows.csv"
    target.parent.mkdir()
    _, summary = load_events(write_csv(tmp_path / "events.csv", rows), quarantine_path=target)
    assert summary.quarantine_path == target
    assert pd.read_csv(target)["reason"].tolist() == ["missing_customer_id"]


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


def test_unknown_events_strict_quarantines_and_lenient_keeps(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["event_type"] = "teleport"
    rows[3]["event_type"] = "teleport"
    path = write_csv(tmp_path / "events.csv", rows)

    strict, strict_summary = load_events(path)
    assert strict_summary.quarantined == {"unknown_event_type": 2}
    assert "teleport" not in strict["event_type"].cat.categories

    lenient, lenient_summary = load_events(path, unknown_events="lenient")
    assert lenient_summary.quarantined == {}
    assert lenient_summary.unknown_event_types == {"teleport": 2}
    assert lenient["event_type"].tolist() == ["page_view", "teleport", "refund", "teleport"]


def test_bad_unknown_events_policy_is_refused():
    with pytest.raises(ValueError, match="strict"):
        validate_events(pd.DataFrame(ROWS), unknown_events="loose")  # type: ignore[arg-type]


def test_validate_events_leaves_its_input_alone():
    frame = pd.DataFrame(ROWS, dtype="str")
    before = frame.copy()
    validate_events(frame, mapping=EventMapping(event_types={"login": "email_open"}))
    pd.testing.assert_frame_equal(frame, before)


# ---------------------------------------------------------------------- time


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


# ---------------------------------------------------------------------- mappings


def write_mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    return path


def test_mapping_file_loads(tmp_path):
    path = write_mapping(
        tmp_path,
        "columns: {customer_id: uid, timestamp: ts}\n"
        "event_types: {view_item: product_view}\n"
        "timestamp_unit: ms\n",
    )
    assert load_mapping(path) == EventMapping(
        columns={"customer_id": "uid", "timestamp": "ts"},
        event_types={"view_item": "product_view"},
        timestamp_unit="ms",
    )
    assert load_mapping(None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A misspelt top-level key: named, with the closest valid key.
        ("colums: {customer_id: uid}\n", "unknown key 'colums'; did you mean 'columns'?"),
        # A column that is not in the contract, on the left of `columns`.
        ("columns: {customer: uid}\n", "'customer' is not a contract column; did you mean"),
        # An event mapped onto a name outside the canonical list.
        (
            "event_types: {view_item: product_veiw}\n",
            "'product_veiw', which is not a canonical event type; did you mean 'product_view'?",
        ),
        # A YAML list instead of a mapping.
        ("- columns\n- event_types\n", "must be a YAML mapping"),
        # An empty file.
        ("", "must be a YAML mapping"),
        # Broken YAML syntax: the line is named.
        ("columns: {customer_id: uid\nevent_types: [\n", "is not valid YAML at line"),
        # `columns` must itself be a mapping.
        ("columns: [customer_id]\n", "'columns' must be a mapping"),
        # A time unit that does not exist.
        ("timestamp_unit: sec\n", "timestamp_unit 'sec' is not one of s, ms, us, ns"),
        # A column mapped to nothing.
        ("columns: {customer_id: }\n", "columns.customer_id must be a name"),
    ],
)
def test_mapping_typos_are_refused_in_one_line(tmp_path, text, expected):
    path = write_mapping(tmp_path, text)
    with pytest.raises(ValueError) as exc:
        load_mapping(path)
    message = one_line(exc)
    assert expected in message
    assert str(path) in message


def test_missing_mapping_file_is_refused(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_mapping(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(exc) and "ga4" in str(exc.value)


@pytest.mark.parametrize("name", ["ga4", "segment", "GA4"])  # presets, by name in any case
def test_presets_map_only_onto_canonical_types(name):
    mapping = load_mapping(name)
    assert mapping is not None and mapping.event_types
    assert set(mapping.event_types.values()) <= set(CANONICAL_EVENT_TYPES)


def test_ga4_preset_translates_a_tiny_log(tmp_path):
    rows = [
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096000000000",
         "event_name": "view_item", "value": "", "platform": "WEB"},
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096060000000",
         "event_name": "add_to_wishlist", "value": "", "platform": "WEB"},
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096120000000",
         "event_name": "purchase", "value": "42.5", "platform": "WEB"},
        {"user_pseudo_id": "999.1", "event_timestamp": "1704096180000000",
         "event_name": "refund", "value": "-42.5", "platform": "WEB"},
        {"user_pseudo_id": "999.1", "event_timestamp": "1704096240000000",
         "event_name": "session_start", "value": "", "platform": "WEB"},
    ]  # fmt: skip
    path = write_csv(tmp_path / "ga4.csv", rows)
    events, summary = load_events(path, mapping=load_mapping("ga4"))
    assert events["event_type"].tolist() == ["product_view", "wishlist_add", "purchase", "refund"]
    assert events["customer_id"].tolist() == ["0123.456"] * 3 + ["999.1"]
    assert events["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["amount"].tolist()[2:] == [42.5, 42.5]
    # session_start is automatically collected, not a recommended event: strict refuses it.
    assert summary.quarantined == {"unknown_event_type": 1}


def test_segment_preset_translates_a_tiny_log(tmp_path):
    records = [
        {"userId": "u1", "timestamp": "2024-01-01T08:00:00.000Z", "event": "Product Viewed",
         "properties": {"product_id": "p1"}},
        {"userId": "u1", "timestamp": "2024-01-01T09:00:00+01:00", "event": "Order Completed",
         "properties": {"total": 30.0, "revenue": 25.0}},
        {"userId": "u1", "timestamp": "2024-01-02T08:00:00.000Z", "event": "Coupon Applied",
         "properties": {"coupon_id": "c"}},
        {"userId": None, "anonymousId": "a1", "timestamp": "2024-01-02T08:00:00.000Z",
         "event": "Product Viewed", "properties": {}},
    ]  # fmt: skip
    path = tmp_path / "segment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    events, summary = load_events(path, mapping=load_mapping("segment"))
    assert events["event_type"].tolist() == ["product_view", "purchase", "promo_redeemed"]
    assert events["timestamp"].iloc[1] == pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["amount"].iloc[1] == 30.0
    # An anonymous visitor has no userId: quarantined, not dropped.
    assert summary.quarantined == {"missing_customer_id": 1}


# ---------------------------------------------------------------------- summary


def test_summary_reads_as_one_line():
    summary = LoadSummary(
        source="x.csv",
        rows_read=1000,
        rows_kept=990,
        quarantined={"missing_customer_id": 3, "unparseable_timestamp": 7},
        quarantine_path=Path("x.quarantine.csv"),
    )
    assert str(summary) == (
        "read 1,000 rows from x.csv: kept 990, quarantined 10 "
        "(unparseable_timestamp: 7, missing_customer_id: 3) -> x.quarantine.csv"
    )
    assert summary.to_dict()["quarantine_path"] == "x.quarantine.csv"
    assert json.loads(json.dumps(summary.to_dict()))["rows_kept"] == 990


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
