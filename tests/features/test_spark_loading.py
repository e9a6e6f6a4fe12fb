"""Spark reads what the in-memory loader reads, and quarantines the same rows.

CSV, JSON Lines and Parquet, with a mapping (renamed columns, event names, an epoch time
unit; nested and key/value sources): the same rows are kept with the same values, the
same rows are quarantined for the same reasons, and the quarantine is a Parquet dataset
whose row references find the rows. Runs on the local session of test_spark_engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import EventMapping
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.features.test_spark_engine import pytestmark as spark_marks
from tests.features.test_spark_engine import spark  # noqa: F401  (the shared session)

pytestmark = spark_marks

SECOND_US = 1_000_000
T0 = 1_704_067_200 * SECOND_US  # 2024-01-01, in microseconds
MAPPING = EventMapping.model_validate(
    {
        "columns": {"customer_id": "uid", "timestamp": "ts", "event_type": "name", "amount": "val"},
        "event_types": {"view_item": "product_view"},
        "timestamp_unit": "us",
    }
)
# uid, ts (us; whole seconds, so both engines compute the same nanoseconds), name, val
ROWS: list[tuple[str | None, int | None, str | None, float | None]] = [
    ("a", T0, "view_item", None),  # kept, event name mapped
    ("", T0 + SECOND_US, "login", None),  # missing_customer_id
    ("b", None, "purchase", 3.0),  # unparseable_timestamp
    ("c", T0 + 2 * SECOND_US, "purchase", -2.0),  # negative_purchase_amount
    ("d", T0 + 3 * SECOND_US, "teleport", None),  # unknown_event_type
    ("e", T0 + 4 * SECOND_US, "refund", -4.5),  # kept, refund as its magnitude
    ("f", T0 + 5 * SECOND_US, None, None),  # missing_event_type
    ("g", T0 + 6 * SECOND_US, "purchase", 1e16),  # amount_out_of_range
    ("h", T0 + 7 * SECOND_US, "purchase", 10.0),  # kept
]


def _write(path: Path, rows: list[tuple[object, ...]] = ROWS) -> Path:
    names = ["uid", "ts", "name", "val"]
    records = [dict(zip(names, r, strict=True)) for r in rows]
    if path.suffix == ".csv":
        pd.DataFrame(records).astype({"ts": "Int64"}).to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _in_memory(path: Path, mapping: EventMapping, tmp: Path) -> tuple[set[tuple], set[tuple]]:
    events, _ = load_events(path, mapping=mapping, quarantine_path=tmp / "q.csv")
    kept = {
        (r.customer_id, r.timestamp.value, r.event_type, None if pd.isna(r.amount) else r.amount)
        for r in events.itertuples()
    }
    quarantine = pd.read_csv(tmp / "q.csv") if (tmp / "q.csv").exists() else pd.DataFrame()
    bad = {(int(r.row_number), r.reason) for r in quarantine.itertuples()}
    return kept, bad


def _on_spark(
    session: object, path: Path, mapping: EventMapping, tmp: Path
) -> tuple[set[tuple], set[tuple], pd.DataFrame]:
    from customer_lifecycle.features.spark_engine import load_events_spark

    target = tmp / "q.parquet"
    clean, summary = load_events_spark(session, path, mapping=mapping, quarantine_path=target)  # type: ignore[arg-type]
    kept = {
        (r.customer_id, r.timestamp, r.event_type, None if pd.isna(r.amount) else r.amount)
        for r in clean.toPandas().itertuples()
    }
    quarantine = pd.read_parquet(target)
    assert summary.quarantine_path == target
    assert sum(summary.quarantined.values()) == len(quarantine)
    assert summary.rows_read == summary.rows_kept + len(quarantine)
    return kept, {(int(r.row_number), r.reason) for r in quarantine.itertuples()}, quarantine


@pytest.mark.parametrize("name", ["events.csv", "events.jsonl", "events.parquet"])
def test_the_same_rows_are_kept_and_quarantined_for_the_same_reasons(
    spark: object,  # noqa: F811
    tmp_path: Path,
    name: str,
) -> None:
    # every quarantine reason, under a mapping with an epoch time unit, in each format
    path = _write(tmp_path / name)
    kept, bad = _in_memory(path, MAPPING, tmp_path)
    got_kept, got_bad, quarantine = _on_spark(spark, path, MAPPING, tmp_path)
    assert got_kept == kept
    assert got_bad == bad
    assert {r for _, r in bad} == {
        "missing_customer_id",
        "missing_event_type",
        "unparseable_timestamp",
        "negative_purchase_amount",
        "amount_out_of_range",
        "unknown_event_type",
    }
    assert list(quarantine.columns[:3]) == ["source_file", "row_number", "reason"]
    assert set(quarantine["source_file"]) == {path.resolve().as_uri()}
    # the row reference finds the row: row 4 of the file is customer c's purchase
    assert quarantine.set_index("row_number").loc[4, "uid"] == "c"


def test_row_numbers_hold_when_a_file_is_read_in_many_splits(
    spark: object,  # noqa: F811
    tmp_path: Path,
) -> None:
    # a CSV of 3,000 rows read in splits of 4 KiB: row numbers still count from the top
    rows = [
        (f"c{i}", T0 + i * SECOND_US, "teleport" if i % 97 == 0 else "purchase", float(i))
        for i in range(3000)
    ]
    path = _write(tmp_path / "events.csv", rows)
    conf = spark.conf  # type: ignore[attr-defined]
    before = conf.get("spark.sql.files.maxPartitionBytes")
    conf.set("spark.sql.files.maxPartitionBytes", "4096")
    try:
        from customer_lifecycle.features.spark_engine import load_events_spark

        target = tmp_path / "q.parquet"
        load_events_spark(spark, path, mapping=MAPPING, quarantine_path=target)  # type: ignore[arg-type]
        assert spark.read.csv(str(path)).rdd.getNumPartitions() > 10  # type: ignore[attr-defined]
    finally:
        conf.set("spark.sql.files.maxPartitionBytes", before)
    got = pd.read_parquet(target).sort_values("row_number")
    assert got["row_number"].tolist() == [i + 1 for i in range(0, 3000, 97)]
    assert got["uid"].tolist() == [f"c{i}" for i in range(0, 3000, 97)]


GA4 = EventMapping.model_validate(
    {
        "columns": {
            "customer_id": {"first_of": ["user_id", "user_pseudo_id"]},
            "timestamp": "event_timestamp",
            "event_type": "event_name",
            "amount": {"first_of": ["ecommerce.purchase_revenue", "event_params[value]"]},
        },
        "event_types": {"purchase": "purchase", "refund": "refund", "page_view": "page_view"},
        "timestamp_unit": "us",
    }
)


def _ga4_records() -> list[dict[str, object]]:
    def param(key: str, **value: object) -> dict[str, object]:
        full = {"string_value": None, "int_value": None, "double_value": None} | value
        return {"key": key, "value": full}

    return [
        # signed in: user_id wins; revenue from the ecommerce record
        {
            "event_timestamp": T0,
            "event_name": "purchase",
            "user_id": "u1",
            "user_pseudo_id": "p1",
            "event_params": [param("page_title", string_value="Cart")],
            "ecommerce": {"purchase_revenue": 25.5, "refund_value": None},
        },
        # anonymous: the pseudo id; the amount from the key/value record (an integer)
        {
            "event_timestamp": T0 + SECOND_US,
            "event_name": "purchase",
            "user_id": None,
            "user_pseudo_id": "p2",
            "event_params": [param("value", int_value=7), param("currency", string_value="EUR")],
            "ecommerce": {"purchase_revenue": None, "refund_value": None},
        },
        # a refund of a negative value: the magnitude
        {
            "event_timestamp": T0 + 2 * SECOND_US,
            "event_name": "refund",
            "user_id": "u1",
            "user_pseudo_id": "p1",
            "event_params": [param("value", double_value=-3.25)],
            "ecommerce": {"purchase_revenue": None, "refund_value": 3.25},
        },
        # unknown to the mapping: quarantined under the strict policy
        {
            "event_timestamp": T0 + 3 * SECOND_US,
            "event_name": "session_start",
            "user_id": None,
            "user_pseudo_id": "p3",
            "event_params": [],
            "ecommerce": None,
        },
    ]


@pytest.mark.parametrize("name", ["ga4.jsonl", "ga4.parquet"])
def test_nested_and_key_value_sources_read_as_in_memory(
    spark: object,  # noqa: F811
    tmp_path: Path,
    name: str,
) -> None:
    # first_of over ids, a field of a record, a key of a key/value list (value coalesced)
    path = tmp_path / name
    records = _ga4_records()
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    kept, bad = _in_memory(path, GA4, tmp_path)
    got_kept, got_bad, _ = _on_spark(spark, path, GA4, tmp_path)
    assert got_bad == bad == {(4, "unknown_event_type")}
    assert sorted((c, a) for c, _, _, a in got_kept) == [("p2", 7.0), ("u1", 3.25), ("u1", 25.5)]
    assert {(c, t, e, float(a)) for c, t, e, a in got_kept} == {
        (c, t, e, float(a)) for c, t, e, a in kept
    }


def test_lost_amounts_stop_the_load_as_in_memory(
    spark: object,  # noqa: F811
    tmp_path: Path,
) -> None:
    # the mapping names an amount source the log lacks while purchases exist
    from customer_lifecycle.features.spark_engine import load_events_spark

    path = _write(tmp_path / "events.csv")
    lost = EventMapping.model_validate(
        {
            "columns": {"customer_id": "uid", "timestamp": "ts", "event_type": "name"}
            | {"amount": "value"},
            "timestamp_unit": "us",
        }
    )
    with pytest.raises(ValueError, match="every purchase amount would be lost") as memory:
        load_events(path, mapping=lost, quarantine_path=tmp_path / "q.csv")
    with pytest.raises(ValueError, match="every purchase amount would be lost") as on_spark:
        load_events_spark(spark, path, mapping=lost, quarantine_path=tmp_path / "q.parquet")  # type: ignore[arg-type]
    assert "'value' has no such field" in str(memory.value) and str(on_spark.value)
    assert not (tmp_path / "q.parquet").exists()


def test_cli_writes_the_quarantine_beside_the_events_and_counts_it(
    spark: object,  # noqa: F811
    tmp_path: Path,
) -> None:
    # `lifecycle features --engine spark` with a mapping file and a CSV log
    path = _write(tmp_path / "events.csv")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "columns: {customer_id: uid, timestamp: ts, event_type: name, amount: val}\n"
        "event_types: {view_item: product_view}\ntimestamp_unit: us\n"
    )
    out = tmp_path / "features.parquet"
    args = ["features", "--events", str(path), "--as-of", "2024-02-01", "--engine", "spark"]
    result = CliRunner().invoke(app, [*args, "--mapping", str(mapping), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kept 3, quarantined 6" in result.output
    assert "events.quarantine.parquet" in result.output
    assert len(pd.read_parquet(tmp_path / "events.quarantine.parquet")) == 6
    assert sorted(pd.read_parquet(out)["customer_id"]) == ["a", "e", "h"]

    # an output that would overwrite the events is refused before any work
    again = [*args, "--mapping", str(mapping), "--out", str(tmp_path / "f2.parquet")]
    result = CliRunner().invoke(app, [*again, "--quarantine", str(path)])
    assert result.exit_code == 2 and "refusing to write --quarantine" in result.output
    result = CliRunner().invoke(app, [*again, "--quarantine", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2 and "Parquet only" in result.output


# time texts: None where the contract refuses the text (quarantined as
# unparseable_timestamp), else the instant it names, in UTC to the nanosecond
TIME_TEXTS: list[tuple[str, str | None]] = [
    ("2024-06-01", "2024-06-01T00:00:00"),  # a date alone is midnight UTC
    ("2024-06-01T10:00", "2024-06-01T10:00:00"),  # hh:mm, naive
    ("2024-06-01 10:00", "2024-06-01T10:00:00"),  # a space for the "T"
    ("2024-06-01T10:00Z", "2024-06-01T10:00:00"),  # hh:mm then Z (Spark refused it)
    ("2024-06-01T10:00+02:00", "2024-06-01T08:00:00"),  # hh:mm then an offset
    ("2024-06-01T10:00-0530", "2024-06-01T15:30:00"),  # hh:mm then a basic offset
    ("2024-06-01T10:00:05", "2024-06-01T10:00:05"),  # seconds, naive
    ("2024-06-01T10:00:05Z", "2024-06-01T10:00:05"),  # seconds and Z
    ("2024-06-01 10:00:05+02:00", "2024-06-01T08:00:05"),  # seconds and an offset
    ("2024-06-01T10:00:05+0200", "2024-06-01T08:00:05"),  # seconds and a basic offset
    ("2024-06-01T10:00:05.1Z", "2024-06-01T10:00:05.1"),  # 1 fraction digit
    ("2024-06-01T10:00:05.12", "2024-06-01T10:00:05.12"),  # 2 digits
    ("2024-06-01T10:00:05.123+01:00", "2024-06-01T09:00:05.123"),  # 3 digits
    ("2024-06-01T10:00:05.1234Z", "2024-06-01T10:00:05.1234"),  # 4 digits
    ("2024-06-01T10:00:05.12345Z", "2024-06-01T10:00:05.12345"),  # 5 digits
    ("2024-06-01T10:00:05.123456Z", "2024-06-01T10:00:05.123456"),  # 6: Spark's precision
    ("2024-06-01T10:00:05.1234567Z", "2024-06-01T10:00:05.1234567"),  # 7: beyond microseconds
    ("2024-06-01T10:00:05.12345678", "2024-06-01T10:00:05.12345678"),  # 8, naive
    ("2024-06-01T10:00:05.123456789-0100", "2024-06-01T11:00:05.123456789"),  # 9 digits
    ("1969-12-31T23:59:59.999999999Z", "1969-12-31T23:59:59.999999999"),  # before 1970
    ("2024-02-29", "2024-02-29T00:00:00"),  # a leap day
    ("1678-01-01T00:00:00+18:00", "1677-12-31T06:00:00"),  # first year, largest offset
    ("2261-12-31T23:59:59.999999999-18:00", "2262-01-01T17:59:59.999999999"),  # last year
    ("2024", None),  # a year alone
    ("2024-06", None),  # a month alone
    ("2024-6-1", None),  # unpadded month and day
    (" 2024-06-01", None),  # a blank before
    ("2024-06-01T10:00:00Z ", None),  # a blank after
    ("2024-06-01T10:00:00Z\n", None),  # a final line break (Java's "$" would allow it)
    ("2024-06-01\n", None),  # a date and a final line break
    ("2024-06-01T10:00:00 UTC", None),  # a zone name
    ("2024-06-01T10:00:00CET", None),  # a zone abbreviation
    ("2024-06-01T10:00:00 Europe/Paris", None),  # a region zone
    ("2024-06-01T10:00:00GMT+2", None),  # a GMT zone
    ("2024-06-01T10:00:00+02", None),  # an offset of hours alone
    ("2024-06-01T10:00:00+18:30", None),  # an offset beyond 18 hours
    ("2024-06-01T10:00:00.1234567890Z", None),  # ten fraction digits
    ("2023-02-29", None),  # no leap day in 2023
    ("1677-12-31", None),  # before the first year
    ("2262-01-01", None),  # after the last year
    ("9999-01-01", None),  # far-off year (Spark's "* 1000" overflowed: the job failed)
    ("+12024-01-01", None),  # a signed five-digit year (overflowed too)
    ("2024-06-01t10:00:00z", None),  # lower-case "t" and "z"
    ("now", None),  # depends on when the file is read
]


def _expected_nanos(instant: str | None) -> int | None:
    return None if instant is None else pd.Timestamp(instant, tz="UTC").value


@pytest.fixture(scope="module")
def times_on_spark(spark: object) -> tuple[dict[str, int | None], dict[str, int | None]]:  # noqa: F811
    """Each text of TIME_TEXTS read by Spark in one job: the clean nanoseconds (None when
    quarantined), and the build path's reading of the same texts (``_nanos``)."""
    from customer_lifecycle.features.spark_engine import _nanos, clean_events_spark

    rows = pd.DataFrame(
        {
            "customer_id": [f"r{i}" for i in range(len(TIME_TEXTS))],
            "timestamp": [text for text, _ in TIME_TEXTS],
            "event_type": "login",
        }
    )
    conf = spark.conf  # type: ignore[attr-defined]
    before = conf.get("spark.sql.ansi.enabled")
    conf.set("spark.sql.ansi.enabled", "true")  # an overflow fails the job, not the row
    try:
        df = spark.createDataFrame(rows)  # type: ignore[attr-defined]
        clean, bad = clean_events_spark(df)
        kept = {r.customer_id: int(r.timestamp) for r in clean.collect()}
        reasons = {r.customer_id: r.reason for r in bad.collect()}
        built = {
            r.customer_id: r.t
            for r in df.select("customer_id", _nanos(df, "timestamp").alias("t")).collect()
        }
    finally:
        conf.set("spark.sql.ansi.enabled", before)
    assert set(reasons.values()) <= {"unparseable_timestamp"}
    assert len(kept) + len(reasons) == len(TIME_TEXTS)
    return {cid: kept.get(cid) for cid in rows["customer_id"]}, built


@pytest.mark.parametrize(("index", "case"), list(enumerate(TIME_TEXTS)), ids=repr)
def test_time_texts_are_read_as_the_in_memory_loader_reads_them(
    times_on_spark: tuple[dict[str, int | None], dict[str, int | None]],
    index: int,
    case: tuple[str, str | None],
) -> None:
    # the case's comment in TIME_TEXTS says what it covers
    from customer_lifecycle.features.validation import validate_events

    text, instant = case
    expected = _expected_nanos(instant)
    clean_on_spark, built_on_spark = times_on_spark
    # in memory, alone (Arrow's parser) and within the whole column, which mixes times
    # with and without offsets (the contract's parser)
    column = pd.DataFrame(
        {
            "customer_id": [f"r{i}" for i in range(len(TIME_TEXTS))],
            "timestamp": [t for t, _ in TIME_TEXTS],
            "event_type": "login",
        }
    )
    for frame, cid in ((column.iloc[[index]], f"r{index}"), (column, f"r{index}")):
        events, quarantine, _ = validate_events(frame.reset_index(drop=True))
        row = events[events["customer_id"] == cid]
        got = int(row["timestamp"].iloc[0].value) if len(row) else None
        assert got == expected, frame
        if expected is None:
            assert quarantine.loc[quarantine["customer_id"] == cid, "reason"].tolist() == [
                "unparseable_timestamp"
            ]
    assert clean_on_spark[f"r{index}"] == expected, text
    assert built_on_spark[f"r{index}"] == expected, text
