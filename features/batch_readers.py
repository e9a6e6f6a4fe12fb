"""Reading an event log in record batches, never whole.

:func:`open_source` opens a log (the formats of :func:`features.events.load_events`)
and :meth:`EventSource.batches` yields Arrow record batches of the contract columns,
under their source names: Parquet by row group (:data:`BATCH_ROWS` rows), CSV in blocks
of :data:`CSV_BLOCK_BYTES`, JSON lines in runs of
:data:`features.readers.JSON_BLOCK_BYTES` (each checked for nesting depth first). Cells
are read as :func:`load_events` reads them (CSV as text, JSON lines flattened), so a
streamed log validates to the same rows.
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
    AMOUNT,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TYPE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)
from customer_lifecycle.features.mapping import EventMapping, refuse_lost_amounts
from customer_lifecycle.features.messages import one_line
from customer_lifecycle.features.readers import (
    JSON_BLOCK_BYTES,
    READ_ERRORS,
    as_text,
    check_json_depth,
    csv_head,
    event_format,
    flatten_json,
    json_records,
    resolve_records,
    resolve_sources,
)

#: Rows per read batch (Parquet).
BATCH_ROWS = 1 << 20
#: CSV block size. Arrow's streaming CSV reader keeps about eight blocks read ahead, so
#: this sets the reader's share of peak memory (eight 32 MiB blocks held 270 MiB of raw
#: text before the first batch was handed over).
CSV_BLOCK_BYTES = 8 << 20


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

    def roots(self, names: list[str]) -> list[str]:
        """The columns of a file with columns ``names`` to read: those the contract
        columns' sources start from (:class:`~features.mapping.FieldSource`)."""
        m = self.mapping
        if m is None or m.is_plain:
            return [c for c in dict.fromkeys(self.needed()) if c in names]
        roots = []
        for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            for field in m.source(column).first_of:
                roots.append(field.text if field.text in names else field.column)
        return [c for c in dict.fromkeys(roots) if c in names]

    def batches(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        """Record batches of the contract columns, and the fraction of the file read.

        Mapped sources are resolved (:func:`features.readers.resolve_sources`) into
        columns under :meth:`needed`'s names. After the last batch, a mapped ``amount``
        source that lost every purchase amount stops the read
        (:func:`features.mapping.refuse_lost_amounts`).
        """
        if self.fmt == "parquet":
            batches = _parquet_batches(self)
        elif self.fmt == "csv":
            batches = _csv_batches(self)
        else:
            batches = _jsonl_batches(self)
        amounts = _AmountCount(self.mapping)
        for batch, fraction in batches:
            amounts.add(batch)
            yield batch, fraction
        refuse_lost_amounts(
            self.mapping,
            purchases=amounts.purchases,
            with_amount=amounts.with_amount,
            missing=not amounts.seen,
            label=self.label,
        )


class _AmountCount:
    """Purchases (by the mapping's event names) and those with an amount, over batches."""

    def __init__(self, mapping: EventMapping | None) -> None:
        self.active = (
            mapping is not None and not mapping.allow_missing_amounts and AMOUNT in mapping.columns
        )
        self.purchases = 0
        self.with_amount = 0
        self.seen = False
        if mapping is None or not self.active:
            return
        self.event = mapping.source_column(EVENT_TYPE)
        self.amount = mapping.source_column(AMOUNT)
        names = [n for n, t in mapping.event_types.items() if t == "purchase"]
        if "purchase" not in mapping.event_types:
            names.append("purchase")
        self.names = pa.array(names, pa.string())

    def add(self, batch: pa.RecordBatch) -> None:
        if not self.active or self.event not in batch.schema.names:
            return
        events = as_text(pa.chunked_array([batch.column(self.event)]))
        purchase = pc.fill_null(pc.is_in(pc.utf8_trim_whitespace(events), self.names), False)
        self.purchases += pc.sum(purchase).as_py() or 0
        if self.amount not in batch.schema.names:
            return
        self.seen = True
        amount = batch.column(self.amount)
        valid = pc.is_valid(amount)
        if pa.types.is_string(amount.type) or pa.types.is_large_string(amount.type):
            valid = pc.and_(valid, pc.not_equal(pc.utf8_trim_whitespace(amount), ""))
        self.with_amount += pc.sum(pc.and_(purchase, pc.fill_null(valid, False))).as_py() or 0


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
        columns = src.roots(names)
        schema: pa.Schema | None = None
        total = max(sum(r.metadata.num_rows for r in readers), 1)
        done = 0
        for reader in readers:
            present = [c for c in columns if c in reader.schema_arrow.names]
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
                batch.validate(full=True)  # as load_events: text that is not UTF-8 refused
                batch = plain(_select(resolve_sources(batch, src.mapping, src.label), src))
                if schema is None:
                    schema = batch.schema
                elif batch.schema != schema:
                    # a later file may lack a column or store it differently
                    batch = _conform(batch, schema, src.label)
                done += batch.num_rows
                yield batch, done / total
    except READ_ERRORS as exc:
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


def _csv_batches(src: EventSource) -> Iterator[tuple[pa.RecordBatch, float]]:
    import pyarrow.csv as pcsv

    head = csv_head(src.path, src.label)
    # Arrow reads a few blocks ahead of the batch it hands over, so the bytes read so far
    # say little about the rows handed over: progress (and the number of spill files)
    # comes from the rows per byte of the file's head instead.
    estimate = max(head.rows_per_byte * src.path.stat().st_size, 1.0)
    columns = [c for c in dict.fromkeys(src.needed()) if c in head.names]
    try:
        with open(src.path, "rb") as raw:
            gz = src.path.name.lower().endswith(".gz")
            stream: Any = gzip.GzipFile(fileobj=raw) if gz else raw
            # Every cell is read as text, as load_events does: ids such as "007" keep
            # their zeros, the quarantine shows cells exactly as written, and no column
            # is typed by inference on one block (which a later block could then fail).
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=True),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.string() for name in head.names},
                    include_columns=columns,
                    strings_can_be_null=False,
                ),
            )
            rows = 0
            for batch in reader:
                rows += batch.num_rows
                yield batch, min(rows / estimate, 0.999)
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {src.label}: {one_line(exc)}") from None


def _jsonl_batches(src: EventSource) -> Iterator[tuple[pa.RecordBatch, float]]:
    import pyarrow.json as pjson

    size = max(src.path.stat().st_size, 1)
    columns: list[str] | None = None
    line_offset = 0
    with open(src.path, "rb") as fh:
        while True:
            lines = fh.readlines(JSON_BLOCK_BYTES)
            if not lines:
                break
            if line_offset == 0 and lines[0].startswith(b"\xef\xbb\xbf"):
                lines[0] = lines[0][3:]
            block = b"".join(lines)
            check_json_depth(block, first_line=line_offset + 1, label=src.label)
            try:
                table = pjson.read_json(io.BytesIO(block))
                table.validate(full=True)  # as in load_events: malformed arrays seen
                table = flatten_json(resolve_sources(table, src.mapping, src.label))
            except pa.ArrowInvalid:
                # One type per field is what Arrow needs; a block that mixes them is
                # read by the standard library, as load_events does for a whole file.
                table = _jsonl_python(lines, line_offset, src)
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


def _jsonl_python(lines: list[bytes], line_offset: int, src: EventSource) -> pa.Table:
    records = json_records(lines, first_line=line_offset + 1, label=src.label)
    resolved = resolve_records(records, src.mapping, src.label)
    frame = pd.json_normalize(records)
    for name, values in resolved.items():
        frame[name] = pd.Series(values, index=frame.index, dtype=object)
    return pa.table({str(c): _series_text(frame[c]) for c in frame.columns})


def _select(batch: pa.RecordBatch, src: EventSource) -> pa.RecordBatch:
    """The contract columns' (resolved) source columns of a batch, nothing else."""
    names = [c for c in dict.fromkeys(src.needed()) if c in batch.schema.names]
    return batch.select(names)


def _series_text(series: pd.Series) -> pa.Array:
    """Cells as strings, missing as null; whole floats as integers (ids widened by NaN)."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.dropna().to_numpy()
        # only where every value is an integer a float holds exactly (huge or infinite
        # values stay floats: as integers they would be other numbers)
        if np.all(np.abs(values) <= 2**53) and np.all(np.mod(values, 1) == 0):
            series = series.astype("Int64")
    return pa.array([None if _missing(v) else str(v) for v in series], pa.string())


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns decoded, large strings narrowed and columns of nulls typed as
    strings, so spill files share a schema (and every column can be counted)."""
    arrays = []
    for col in batch.columns:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_nested(col.type):  # a list where a value should be: its text
            col = as_text(pa.chunked_array([col], col.type)).combine_chunks()
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


__all__ = ["BATCH_ROWS", "CSV_BLOCK_BYTES", "EventSource", "as_text", "open_source", "plain"]
