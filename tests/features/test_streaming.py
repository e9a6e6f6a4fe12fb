"""Streaming features (``lifecycle features --chunk-customers``): chunked equals the
in-memory engine, bad rows keep their source row numbers, failures leave no output; and
the spill hash that makes chunking possible is a fixed function of the customer id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.spill import route
from customer_lifecycle.features.streaming import features_file

from tests.features.support import AS_OF, BAD_ROWS, leftovers, raw_log, write_log


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return raw_log()


def test_streamed_features_equal_the_in_memory_engine(raw: pd.DataFrame, tmp_path: Path) -> None:
    events = write_log(raw, tmp_path / "events.parquet")
    out = tmp_path / "features.parquet"
    summary = features_file(events, as_of=AS_OF, out=out, chunk_customers=30, partitions=4)
    loaded, _ = load_events(events)
    expected = build_features(loaded, as_of=AS_OF)
    got = pd.read_parquet(out).set_index("customer_id").sort_index()
    pd.testing.assert_frame_equal(got, expected, check_names=False, check_exact=True)
    assert summary.customers == len(expected)


def test_streamed_features_quarantine_bad_rows_under_source_row_numbers(
    raw: pd.DataFrame, tmp_path: Path
) -> None:
    events = write_log(raw, tmp_path / "events.jsonl")
    out = tmp_path / "features.csv"
    summary = features_file(events, as_of=AS_OF, out=out, chunk_customers=20, partitions=5)
    quarantine = pd.read_csv(tmp_path / "events.quarantine.csv", dtype=str)
    assert quarantine["row_number"].astype(int).tolist() == [r + 1 for r in BAD_ROWS]
    assert quarantine["reason"].tolist() == [v[-1] for v in BAD_ROWS.values()]
    assert summary.load.quarantine_path == tmp_path / "events.quarantine.csv"
    assert summary.rows_read == len(raw)
    assert summary.rows_quarantined == len(BAD_ROWS)
    assert leftovers(tmp_path) == []


def _stop_on(phase: str) -> Callable[[str, int, int], None]:
    def progress(current: str, done: int, total: int) -> None:
        if current == phase and done > 0:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize(
    "phase",
    [
        "reading events",  # stopped while partitioning, after the first batch
        "scoring",  # stopped after the first spill file was read
    ],
)
def test_interrupted_features_file_leaves_no_output(
    raw: pd.DataFrame, tmp_path: Path, phase: str
) -> None:
    events = write_log(raw, tmp_path / "events.csv")
    out = tmp_path / "features.parquet"
    with pytest.raises(KeyboardInterrupt):
        features_file(
            events, as_of=AS_OF, out=out, chunk_customers=5, partitions=6, progress=_stop_on(phase)
        )
    # no output, no quarantine, no temporary file or spill directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


IDS = ["c0000001", "c0000002", "007", "", "ünïcode", "a" * 40]


def _spill_file_of_each(ids: pa.Array, n_parts: int) -> list[int]:
    order, starts = route(ids, n_parts)
    parts = np.empty(len(ids), dtype=np.int64)
    for p in range(n_parts):
        parts[order[starts[p] : starts[p + 1]]] = p
    return parts.tolist()


@pytest.mark.parametrize(
    ("n_parts", "expected"),
    [
        (7, [5, 0, 5, 5, 5, 1]),  # a few spill files: several ids share one
        (1024, [828, 886, 47, 155, 15, 47]),  # the most spill files there can be
    ],
)
def test_spill_file_is_a_fixed_function_of_the_id(n_parts: int, expected: list[int]) -> None:
    # Pinned values: any hash would be correct within one run, but the spill files are
    # documented as the same in every run and on every machine.
    assert _spill_file_of_each(pa.array(IDS), n_parts) == expected


def test_routing_keeps_file_order_within_a_spill_file() -> None:
    ids = pa.array(["b", "a", "b", "c", "a", "b"])
    order, starts = route(ids, 3)
    assert sorted(order.tolist()) == list(range(len(ids)))
    for p in range(3):
        rows = order[starts[p] : starts[p + 1]].tolist()
        assert rows == sorted(rows)  # a customer's events keep their order in the file


def test_numeric_ids_go_where_their_text_goes() -> None:
    # a Parquet log may store ids as integers; they must meet the same ids read as text
    assert _spill_file_of_each(pa.array([7, 1, 12345]), 5) == _spill_file_of_each(
        pa.array(["7", "1", "12345"]), 5
    )


def test_csv_is_partitioned_by_its_size_not_read_whole(
    raw: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrow's CSV reader reads blocks ahead, so "bytes read so far" said the whole file
    # was read with the first batch: one spill file, the whole log in one chunk
    import customer_lifecycle.features.batch_readers as batch_readers
    import customer_lifecycle.features.spill as spill

    monkeypatch.setattr(batch_readers, "CSV_BLOCK_BYTES", 64 << 10)  # many blocks
    monkeypatch.setattr(spill, "ROWS_PER_PARTITION", 1_000)
    events = write_log(raw, tmp_path / "events.csv")
    source = batch_readers.open_source(events, None)
    fractions = [fraction for _, fraction in source.batches()]
    assert len(fractions) > 5 and fractions[0] < 0.3
    summary = features_file(events, as_of=AS_OF, out=tmp_path / "f.parquet")
    assert 9 <= summary.partitions <= 15  # 12,000 rows in files of about 1,000


def test_csv_cells_are_text_in_every_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # numbers in the first blocks and text in a later one: no block is typed by inference
    import customer_lifecycle.features.batch_readers as batch_readers

    monkeypatch.setattr(batch_readers, "CSV_BLOCK_BYTES", 4 << 10)
    lines = [f"{i},2024-01-01T00:00:00Z,purchase,{i}" for i in range(2_000)]
    lines.append("x,2024-01-01T00:00:00Z,purchase,lots")
    path = tmp_path / "events.csv"
    path.write_text("customer_id,timestamp,event_type,amount\n" + "\n".join(lines) + "\n")
    summary = features_file(path, as_of=AS_OF, out=tmp_path / "f.csv")
    assert summary.rows_read == 2_001
    assert summary.load.quarantined == {"unparseable_amount": 1}
