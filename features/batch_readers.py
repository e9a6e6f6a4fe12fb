"""Reading an event log in record batches, never whole.

:func:`open_source` opens a log (the formats of :func:`features.events.load_events`)
and :meth:`EventSource.batches` yields Arrow record batches of the contract columns,
under their source names: Parquet by row group (:data:`BATCH_ROWS` rows), CSV and JSON
lines in blocks of :data:`BLOCK_BYTES`. Cells are read as :func:`load_events` reads
them (CSV as text, JSON lines flattened), so a streamed log validates to the same rows.
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.contract import (
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TYPE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)
from customer_lifecycle.features.mapping import EventMapping
from customer_lifecycle.features.messages import one_line
from customer_lifecycle.features.readers import event_format, json_records

#: Rows per read batch (Parquet); CSV and JSON lines are read in blocks of this size.
BATCH_ROWS = 1 << 20
BLOCK_BYTES = 32 << 20


@dataclass
class EventSource:
    """An event log opened for batch reading, with the contract columns it provides."""

    path: Path
    fmt: str
    mapping: EventMapping | None
    label: str

    def needed(self) -> list[str]:
        """Source names of every contract column (mapped names included)."""
        m = self.mapping
        return [m.source_column(c) if m else c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]

    def label_columns(self) -> list[str]:
        """Source names of the customer id, event type and channel columns."""
        m = self.mapping
        return [m.source_column(c) if m else c for c in (CUSTOMER_ID, EVENT_TYPE, CHANNEL)]

    def batches(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        """Record batches of the contract columns, and the fraction of the file read."""
        if self.fmt == "parquet":
            yield from _parquet_batches(self)
        elif self.fmt == "csv":
            yield from _csv_batches(self)
        else:
            yield from _jsonl_batches(self)


def open_source(path: Path, mapping: EventMapping | None) -> EventSource:
    """Open ``path`` for batch reading (its format from the name, as ``load_events``)."""
    fmt = event_format(path)
    return EventSource(path, fmt, mapping, f"events file {path}")


def _parquet_batches(src: EventSource) -> Iterator[tuple[pa.RecordBatch, float]]:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    try:
        # the files a dataset (and so load_events) would read, in the same order
        files = ds.dataset(src.path, format="parquet").files if src.path.is_dir() else [src.path]
        if not files:
            raise ValueError(f"{src.label} has no rows")
        # Without pre-buffering, a reader holds one column chunk at a time rather than
        # whole row groups ahead (about 300 MiB less at a million rows per group).
        readers = [pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20) for f in files]
        names = readers[0].schema_arrow.names
        columns = [c for c in dict.fromkeys(src.needed()) if c in names]
        schema: pa.Schema | None = None
        total = max(sum(r.metadata.num_rows for r in readers), 1)
        done = 0
        for reader in readers:
            present = [c for c in columns if c in reader.schema_arrow.names]
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
                batch = plain(batch)
                if schema is None:
                    schema = batch.schema
                elif batch.schema != schema:
                    # a later file may lack a column or store it differently
                    batch = _conform(batch, schema, src.label)
                done += batch.num_rows
                yield batch, done / total
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read {src.label}: {one_line(exc)}") from None


def _conform(batch: pa.RecordBatch, schema: pa.Schema, label: str) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        if f.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        try:
            arrays.append(batch.column(f.name).cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(
                f"{label}: column {f.name!r} is {batch.schema.field(f.name).type} in one file "
                f"and {f.type} in another"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _CountingFile(io.RawIOBase):
    """A binary file that counts the bytes read from it (progress for compressed CSV)."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        self.consumed += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _csv_batches(src: EventSource) -> Iterator[tuple[pa.RecordBatch, float]]:
    import csv

    import pyarrow.csv as pcsv

    gz = src.path.name.lower().endswith(".gz")
    size = max(src.path.stat().st_size, 1)
    opener: Any = gzip.open if gz else open
    try:
        with opener(src.path, "rt", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {src.label}: {one_line(exc)}") from None
    if not header:
        raise ValueError(f"{src.label} has no rows")
    columns = [c for c in dict.fromkeys(src.needed()) if c in header]
    raw = _CountingFile(src.path)
    try:
        stream: Any = gzip.GzipFile(fileobj=raw) if gz else io.BufferedReader(raw, 1 << 20)
        # Every cell is read as text, as load_events does: ids such as "007" keep their
        # zeros and the quarantine shows cells exactly as written.
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                include_columns=columns,
                strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield batch, min(raw.consumed / size, 0.999)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {src.label}: {one_line(exc)}") from None
    finally:
        raw.close()


def _jsonl_batches(src: EventSource) -> Iterator[tuple[pa.RecordBatch, float]]:
    import pyarrow.json as pjson

    size = max(src.path.stat().st_size, 1)
    columns: list[str] | None = None
    line_offset = 0
    with open(src.path, "rb") as fh:
        while True:
            lines = fh.readlines(BLOCK_BYTES)
            if not lines:
                break
            if line_offset == 0 and lines[0].startswith(b"\xef\xbb\xbf"):
                lines[0] = lines[0][3:]
            try:
                table = pjson.read_json(io.BytesIO(b"".join(lines)))
                while any(pa.types.is_struct(t) for t in table.schema.types):
                    table = table.flatten()
            except pa.ArrowInvalid:
                # One type per field is what Arrow needs; a block that mixes them is
                # read by the standard library, as load_events does for a whole file.
                table = _jsonl_python(lines, line_offset, src.label)
            line_offset += len(lines)
            if columns is None:
                columns = [c for c in dict.fromkeys(src.needed()) if c in table.column_names]
            # Every column as text, and the first block's columns throughout, so that all
            # blocks share one schema (a JSON log may change types from line to line).
            arrays = [
                as_text(table.column(c))
                if c in table.column_names
                else pa.nulls(table.num_rows, pa.string())
                for c in columns
            ]
            batch = pa.RecordBatch.from_arrays(
                [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays],
                names=columns,
            )
            if batch.num_rows:
                yield batch, min(fh.tell() / size, 0.999)


def _jsonl_python(lines: list[bytes], line_offset: int, label: str) -> pa.Table:
    records = json_records(lines, first_line=line_offset + 1, label=label)
    frame = pd.json_normalize(records)
    return pa.table({str(c): _series_text(frame[c]) for c in frame.columns})


def _series_text(series: pd.Series) -> pa.Array:
    """Cells as strings, missing as null; whole floats as integers (ids widened by NaN)."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.dropna().to_numpy()
        if np.all(np.mod(values, 1) == 0):
            series = series.astype("Int64")
    return pa.array([None if _missing(v) else str(v) for v in series], pa.string())


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` as strings (Arrow's cast, else Python's ``str`` of each value)."""
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = column.to_pylist()
        return pa.chunked_array([pa.array([None if v is None else str(v) for v in values])])


def plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns decoded and large strings narrowed, so spill files share a schema."""
    arrays = []
    for col in batch.columns:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


__all__ = ["BATCH_ROWS", "BLOCK_BYTES", "EventSource", "as_text", "open_source", "plain"]
