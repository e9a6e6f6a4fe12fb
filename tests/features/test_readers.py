"""Tests for reading event files (features.readers): formats, text cells, empty files."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from customer_lifecycle.features.events import load_events

from tests.features.event_files import (
    ROWS,
    one_line,
    typed_table,
    write_csv,
    write_csv_gz,
    write_jsonl,
    write_parquet,
    write_parquet_dir,
)


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


def test_ids_with_leading_zeros_survive(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert events["customer_id"].tolist() == ["007", "0042", "007", "c-3"]
    assert list(events["customer_id"].cat.categories) == ["0042", "007", "c-3"]


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
        pq.write_table(typed_table(ROWS).slice(0, 0), path)
    with pytest.raises(ValueError, match="has no rows"):
        load_events(path)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("depth", "refused"),
    [
        (100, False),  # as deep as a line may be: read
        (101, True),  # one level more: refused before any parser sees it
        (50_000, True),  # Arrow's JSON parser overflowed its stack here (SIGSEGV)
    ],
)
def test_deeply_nested_json_lines_are_refused_in_one_line(tmp_path, depth, refused):
    from customer_lifecycle.features.streaming import features_file

    good = '{"customer_id": "a", "timestamp": "2024-01-01", "event_type": "login"}'
    # the line's object is one level, its field "x" the others; brackets in strings
    # do not count
    deep = good.replace('"a"', '"b"')[:-1] + f', "x": {_nested(depth - 1)}, "s": "[[[{{"}}'
    path = tmp_path / "events.jsonl"
    path.write_text(f"{good}\n\n{deep}\n")
    out = tmp_path / "out" / "f.csv"
    if not refused:
        assert load_events(path)[1].rows_kept == 2
        assert features_file(path, as_of="2024-02-01", out=out).rows_kept == 2
        return
    with pytest.raises(ValueError) as exc:
        load_events(path)
    # the line number counts the blank line, as an editor does
    assert one_line(exc) == f"events file {path} line 3 is nested more than 100 levels deep"
    with pytest.raises(ValueError, match="line 3 is nested more than 100 levels deep"):
        features_file(path, as_of="2024-02-01", out=out)
    assert list(out.parent.iterdir()) == []  # the spill directory is gone


def test_csv_header_and_cells_longer_than_the_csv_module_allows_are_read(tmp_path):
    # Python's csv module refuses fields over 128 KiB; the header is read by Arrow now
    path = tmp_path / "events.csv"
    long = "x" * 200_000
    path.write_text(
        f"customer_id,timestamp,event_type,{long}\n"
        f"a,2024-01-01T00:00:00Z,login,{long}\nb,2024-01-01T00:00:00Z,login,\n"
    )
    events, summary = load_events(path)
    assert summary.rows_kept == 2
