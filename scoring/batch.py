"""Batch scoring from an event log to a table of the docs/cli.md columns, in bounded memory.

:func:`score_file` (and :func:`features_file`, which stops at the features) never holds
the whole log. It makes two passes:

1. **Partition.** The log is read in batches (Parquet row groups, CSV blocks, runs of
   JSON lines). Each row is routed by a stable hash of its customer id to one of *P*
   spill files (Arrow IPC, in a hidden directory next to the output), together with its
   row number in the source file. A customer's events therefore end up whole in one
   spill file however they are spread through the log (a log sorted by time spreads
   every customer across all of it).
2. **Score.** Spill files are gathered until about ``chunk_customers`` customers are in
   hand; the chunk is checked with :func:`features.events.validate_events` (bad rows go
   to the quarantine file under their *source* row numbers), its features are built
   with the model's own definition (:func:`features.engine.build_features`) and scored
   (:meth:`scoring.bundle.ModelBundle.predict_features`), and the scores are appended
   to a temporary output file.

Validation runs per chunk rather than per read batch because label checks cost one
operation per *distinct* customer: a customer sits in one chunk but in many batches.
Within a customer, events keep their order in the file, so every value is bit for bit
what the in-memory path (load the log, build features, score) gives.

The output and the quarantine file are renamed into place only when everything has
succeeded. On any error, ``KeyboardInterrupt`` included, the temporary files and the
spill directory are removed and no output is left behind (an earlier output at the same
path is untouched). Only a process killed outright (``SIGKILL``) can leave hidden
``.<name>.*.tmp`` files and a ``.<name>.spill-*`` directory; they never carry the
output's name, and a rerun does not need them gone.

Peak memory is set by a few read batches (about a million rows each) and one chunk of
``chunk_customers`` customers' events, features and scores (at least one spill file,
about :data:`ROWS_PER_PARTITION` events), not by the size of the log.
"""

from __future__ import annotations

import gzip
import io
import itertools
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numba
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
    parse_as_of,
)
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import (
    QUARANTINE_REASONS,
    EventMapping,
    LoadSummary,
    default_quarantine_path,
    event_format,
    json_records,
    load_mapping,
    one_line,
    validate_events,
)
from customer_lifecycle.features.io import table_format
from customer_lifecycle.scoring.bundle import RISK_BANDS, ModelBundle
from customer_lifecycle.scoring.pyfunc import load_bundle

#: Customers whose events, features and scores are held in memory at once (default).
DEFAULT_CHUNK_CUSTOMERS = 50_000
#: Target events per spill file; the number of spill files follows from the log's size.
ROWS_PER_PARTITION = 1 << 20
#: Most spill files open at once (above ~10^9 events the files grow instead).
MAX_PARTITIONS = 1024
#: Rows per read batch (Parquet); CSV and JSON lines are read in blocks of this size.
BATCH_ROWS = 1 << 20
BLOCK_BYTES = 32 << 20

#: ``progress(phase, done, total)``: phase ``"reading events"`` counts source rows
#: (``total`` is an estimate for CSV and JSON lines until the end), phase ``"scoring"``
#: counts spill files.
Progress = Callable[[str, int, int], None]

_ROW = "__lifecycle_source_row__"
_T = TypeVar("_T")


@dataclass
class BatchSummary:
    """What one :func:`score_file` run did.

    Attributes
    ----------
    load
        Rows read, kept and quarantined (by reason), and where the quarantine file is.
    customers
        Customers scored (those with at least one event before ``as_of``).
    risk_bands
        Customers per churn risk band.
    out
        The output file.
    partitions
        Spill files the log was partitioned into.
    seconds
        Wall time of the run.
    """

    load: LoadSummary
    customers: int = 0
    risk_bands: dict[str, int] = field(default_factory=dict)
    out: Path | None = None
    partitions: int = 0
    seconds: float = 0.0

    @property
    def rows_read(self) -> int:
        return self.load.rows_read

    @property
    def rows_kept(self) -> int:
        return self.load.rows_kept

    @property
    def rows_quarantined(self) -> int:
        return sum(self.load.quarantined.values())

    def __str__(self) -> str:
        line = f"{self.load}\nwrote {self.customers:,} customers to {self.out}"
        if self.risk_bands:
            bands = ", ".join(f"{b} {self.risk_bands.get(b, 0):,}" for b in RISK_BANDS)
            line += f" (risk: {bands})"
        return line + f" in {self.seconds:.1f} s"


def score_file(
    events_path: str | Path,
    *,
    model: str | Path | ModelBundle,
    as_of: object,
    out: str | Path,
    mapping: str | Path | EventMapping | None = None,
    unknown_events: str = "strict",
    progress: Progress | None = None,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    quarantine_path: str | Path | None = None,
    partitions: int | None = None,
    return_scores: bool = True,
) -> tuple[pd.DataFrame | None, BatchSummary]:
    """Score every customer with an event before ``as_of``; write ``out`` atomically.

    Columns: ``customer_id, stage, churn_probability, churn_risk, p_<stage>...``, one
    row per customer, in chunks (sorted by ``customer_id`` within each chunk).

    Parameters
    ----------
    events_path
        Event log: ``.csv``, ``.csv.gz``, ``.parquet``/``.pq`` (file or directory),
        ``.jsonl``/``.ndjson``. Read in batches, never whole.
    model
        Model URI (``models:/NAME@champion``), MLflow model or bundle directory, or a
        loaded :class:`~scoring.bundle.ModelBundle`. Features are built with the
        model's own definition.
    as_of
        Score as of this time (ISO 8601; naive is UTC); only earlier events count.
    out
        Output table, ``.parquet`` or ``.csv``/``.csv.gz``.
    mapping, unknown_events
        As for :func:`features.events.load_events`.
    progress
        ``progress(phase, done, total)``; see :data:`Progress`.
    chunk_customers
        About this many customers are validated, featurized and scored at once (at
        least one spill file's worth): the knob for peak memory.
    quarantine_path
        Where bad rows go (default ``<stem>.quarantine.csv`` beside the log); written
        only when a row is quarantined, in source row order. For speed, only the
        columns the event contract reads are kept (under their source names).
    partitions
        Number of spill files; by default one per :data:`ROWS_PER_PARTITION` rows.
    return_scores
        Also return every score as one frame (memory then grows with the number of
        customers); the CLI passes ``False``.

    Returns
    -------
    scores : pandas.DataFrame or None
        The rows written to ``out`` (``None`` unless ``return_scores``).
    summary : BatchSummary
        Row counts, customers, risk bands.

    Raises
    ------
    ValueError
        On a bad option, an unreadable or empty log, a missing required column or an
        unknown model; nothing is written.
    """
    cutoff = parse_as_of(as_of)
    bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
    bands = dict.fromkeys(RISK_BANDS, 0)

    def score(events: pd.DataFrame) -> pd.DataFrame:
        scores = bundle.predict_features(
            build_features(events, as_of=cutoff, definition=bundle.definition)
        )
        for band, n in scores["churn_risk"].value_counts().items():
            bands[str(band)] += int(n)
        return scores

    scores, summary = _stream(
        events_path,
        out=out,
        apply=score,
        empty=_empty_scores(bundle),
        mapping=mapping,
        unknown_events=unknown_events,
        progress=progress,
        chunk_customers=chunk_customers,
        quarantine_path=quarantine_path,
        partitions=partitions,
        keep=return_scores,
    )
    summary.risk_bands = bands
    return scores, summary


def features_file(
    events_path: str | Path,
    *,
    as_of: object,
    out: str | Path,
    definition: FeatureDefinition | None = None,
    mapping: str | Path | EventMapping | None = None,
    unknown_events: str = "strict",
    progress: Progress | None = None,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    quarantine_path: str | Path | None = None,
    partitions: int | None = None,
) -> BatchSummary:
    """Build features for every customer as :func:`score_file` scores them, in bounded memory.

    Writes ``customer_id`` and the definition's columns, one row per customer, in
    chunks (sorted within each chunk); the values equal
    :func:`features.engine.build_features` on the whole log. Options as for
    :func:`score_file`.
    """
    cutoff = parse_as_of(as_of)
    spec = definition or load_definition()

    def featurize(events: pd.DataFrame) -> pd.DataFrame:
        return build_features(events, as_of=cutoff, definition=spec).reset_index()

    empty = pd.DataFrame(
        {
            CUSTOMER_ID: pd.Series(dtype="str"),
            **{name: pd.Series(dtype="float64") for name in spec.feature_names()},
        }
    )
    _, summary = _stream(
        events_path,
        out=out,
        apply=featurize,
        empty=empty,
        mapping=mapping,
        unknown_events=unknown_events,
        progress=progress,
        chunk_customers=chunk_customers,
        quarantine_path=quarantine_path,
        partitions=partitions,
        keep=False,
    )
    return summary


def _stream(
    events_path: str | Path,
    *,
    out: str | Path,
    apply: Callable[[pd.DataFrame], pd.DataFrame],
    empty: pd.DataFrame,
    mapping: str | Path | EventMapping | None,
    unknown_events: str,
    progress: Progress | None,
    chunk_customers: int,
    quarantine_path: str | Path | None,
    partitions: int | None,
    keep: bool,
) -> tuple[pd.DataFrame | None, BatchSummary]:
    """Partition the log by customer, then ``apply`` each chunk of clean events and
    append its rows to ``out``; commit ``out`` and the quarantine only at the end."""
    started = time.perf_counter()
    out = Path(out)
    table_format(out)
    if unknown_events not in ("strict", "lenient"):
        raise ValueError(f"unknown_events must be 'strict' or 'lenient', got {unknown_events!r}")
    if chunk_customers < 1:
        raise ValueError("chunk_customers must be at least 1")
    if partitions is not None and partitions < 1:
        raise ValueError("partitions must be at least 1")
    path = Path(events_path)
    if not path.exists():
        raise FileNotFoundError(f"events file {path} does not exist")
    source = _open_source(
        path, mapping if isinstance(mapping, EventMapping) else load_mapping(mapping)
    )
    report = progress or (lambda phase, done, total: None)
    q_target = (
        Path(quarantine_path) if quarantine_path is not None else default_quarantine_path(path)
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.spill-"))
    output = _Appender(out)
    quarantine = _Appender(q_target)
    try:
        parts, n_rows = _partition(source, spill, partitions, report)
        summary, frames = _apply_partitions(
            parts,
            n_rows,
            source=source,
            unknown_events=unknown_events,
            apply=apply,
            chunk_customers=chunk_customers,
            spill=spill,
            output=output,
            quarantine=quarantine,
            keep=keep,
            report=report,
        )
        if summary.rows_quarantined:
            quarantine.commit()
            summary.load.quarantine_path = q_target
        else:
            quarantine.discard()
        output.commit(empty=empty)
    except BaseException:
        output.discard()
        quarantine.discard()
        raise
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    summary.out = out
    summary.seconds = time.perf_counter() - started
    result = None
    if keep:
        result = pd.concat(frames, ignore_index=True) if frames else empty
    return result, summary


# -- reading the source in batches -----------------------------------------------------


@dataclass
class _Source:
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


def _open_source(path: Path, mapping: EventMapping | None) -> _Source:
    fmt = event_format(path)
    return _Source(path, fmt, mapping, f"events file {path}")


def _parquet_batches(src: _Source) -> Iterator[tuple[pa.RecordBatch, float]]:
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
                batch = _plain(batch)
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


def _csv_batches(src: _Source) -> Iterator[tuple[pa.RecordBatch, float]]:
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


def _jsonl_batches(src: _Source) -> Iterator[tuple[pa.RecordBatch, float]]:
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
                _as_text(table.column(c))
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


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = column.to_pylist()
        return pa.chunked_array([pa.array([None if v is None else str(v) for v in values])])


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns decoded and large strings narrowed, so spill files share a schema."""
    arrays = []
    for col in batch.columns:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


# -- pass 1: partition by customer -----------------------------------------------------


def _partition(
    source: _Source, spill: Path, partitions: int | None, report: Progress
) -> tuple[list[Path], int]:
    """Route every row to a spill file by a hash of its customer id; return files, rows."""
    writers: list[Any] = []
    paths: list[Path] = []
    schema: pa.Schema | None = None
    cid = source.label_columns()[0]
    n_rows = 0
    takers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lifecycle-take")
    try:
        for raw_batch, fraction in _prefetch(source.batches()):
            if raw_batch.num_rows == 0:
                continue
            batch = _plain(raw_batch)
            if not writers:
                # Refuse a log without a required column now, with load_events' message,
                # rather than after the whole file has been partitioned.
                validate_events(
                    batch.slice(0, 1).to_pandas(),
                    mapping=source.mapping,
                    source=f"file {source.path}",
                )
                estimate = batch.num_rows / max(fraction, 1e-9)
                n_parts = partitions or int(
                    min(MAX_PARTITIONS, max(1, math.ceil(estimate / ROWS_PER_PARTITION)))
                )
                schema = batch.schema.append(pa.field(_ROW, pa.int64()))
                for p in range(n_parts):
                    paths.append(spill / f"part-{p:05d}.arrow")
                    writers.append(pa.ipc.new_stream(str(paths[-1]), schema))
            order, starts = _route(batch.column(cid), len(writers))
            indices = pa.array(order)
            # Arrow's take runs without the GIL: the columns are taken side by side.
            columns = list(takers.map(pc.take, batch.columns, itertools.repeat(indices)))
            columns.append(pa.array(order + n_rows))  # source row of each routed row
            routed = pa.RecordBatch.from_arrays(columns, schema=schema)
            for p, writer in enumerate(writers):
                lo, hi = starts[p], starts[p + 1]
                if hi > lo:
                    writer.write_batch(routed.slice(lo, hi - lo))
            n_rows += batch.num_rows
            report("reading events", n_rows, max(n_rows, round(n_rows / max(fraction, 1e-9))))
    finally:
        takers.shutdown(wait=True)
        for writer in writers:
            writer.close()
    if n_rows == 0:
        raise ValueError(f"{source.label} has no rows")
    report("reading events", n_rows, n_rows)
    return paths, n_rows


def _prefetch(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Iterate ``items`` in a background thread, ``depth`` ahead of the consumer.

    Decoding the next batch (Arrow, which releases the GIL) then overlaps with routing
    and writing this one. The producer stops when the consumer stops, by error or not.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="lifecycle-read", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        worker.join()


def _route(ids: pa.Array, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouping rows by spill file, and each file's start in that order."""
    if not pa.types.is_string(ids.type):
        ids = _as_text(pa.chunked_array([ids])).combine_chunks()
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[ids.offset : ids.offset + len(ids) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    return _route_kernel(offsets, data, np.uint64(n_parts))


@numba.njit(cache=True, nogil=True)
def _route_kernel(offsets, data, n_parts):  # type: ignore[no-untyped-def]
    """FNV-1a over each id's UTF-8 bytes, a splitmix64 finish, then a counting sort.

    The hash is a pure function of the id's bytes, so it is the same in every batch,
    every run and on every machine.
    """
    n = offsets.shape[0] - 1
    part = np.empty(n, dtype=np.int64)
    counts = np.zeros(np.int64(n_parts) + 1, dtype=np.int64)
    for i in range(n):
        h = np.uint64(14695981039346656037)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(1099511628211)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
        p = np.int64(h % n_parts)
        part[i] = p
        counts[p + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        p = part[i]
        order[fill[p]] = i
        fill[p] += 1
    return order, starts


# -- pass 2: validate, featurize, score ------------------------------------------------


def _apply_partitions(
    parts: list[Path],
    n_rows: int,
    *,
    source: _Source,
    unknown_events: str,
    apply: Callable[[pd.DataFrame], pd.DataFrame],
    chunk_customers: int,
    spill: Path,
    output: _Appender,
    quarantine: _Appender,
    keep: bool,
    report: Progress,
) -> tuple[BatchSummary, list[pd.DataFrame]]:
    load = LoadSummary(source=str(source.path), rows_read=0, rows_kept=0)
    summary = BatchSummary(load=load, partitions=len(parts))
    frames: list[pd.DataFrame] = []
    # Quarantined rows are kept in row-number ranges, one per spill file, and each
    # range is sorted at the end, so the file lists them in source order.
    q_ranges = _RangeSpill(spill / "quarantine", len(parts), n_rows)
    pending: list[pa.Table] = []
    pending_customers = 0

    def flush() -> None:
        nonlocal pending, pending_customers
        if not pending:
            return
        table = _label_dictionaries(pa.concat_tables(pending), source.label_columns())
        pending, pending_customers = [], 0
        rows = table.column(_ROW).to_numpy()
        frame = table.drop_columns([_ROW]).to_pandas(split_blocks=True, self_destruct=True)
        del table
        events, bad, chunk_summary = validate_events(
            frame,
            mapping=source.mapping,
            unknown_events=unknown_events,  # type: ignore[arg-type]
            source=f"file {source.path}",
        )
        del frame
        _merge(load, chunk_summary)
        if len(bad):
            # validate_events numbers rows within the chunk; map them back to the file
            bad["row_number"] = rows[bad["row_number"].to_numpy() - 1] + 1
            q_ranges.append(bad)
        del rows
        if len(events) == 0:
            return
        # The previous chunk must be written before this one starts (one chunk in flight:
        # memory stays bounded, and rows are written in chunk order).
        wait()
        in_flight.append(worker.submit(finish, events))

    def finish(events: pd.DataFrame) -> None:
        result = apply(events)
        del events
        if len(result):
            output.append(result)
            summary.customers += len(result)
            if keep:
                frames.append(result)

    def wait() -> None:
        while in_flight:
            in_flight.pop().result()

    # Features and scores of one chunk are made in a worker thread while this thread
    # reads and checks the next chunk: the model's trees run without the GIL on one
    # core, the reading mostly in Arrow, so both cores stay busy.
    in_flight: list[Future[None]] = []
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifecycle-score")
    try:
        report("scoring", 0, len(parts))
        cid = source.label_columns()[0]
        for i, part in enumerate(parts):
            table = _read_spill(part)
            if table is not None:
                pending.append(table)
                pending_customers += pc.count_distinct(table.column(cid)).as_py()
                if pending_customers >= chunk_customers:
                    flush()
            report("scoring", i + 1, len(parts))
        flush()
        wait()
    finally:
        # on an error or an interrupt, let the chunk in flight finish before the caller
        # removes the files it writes to
        for future in in_flight:
            future.cancel()
        worker.shutdown(wait=True)
    q_ranges.drain_sorted(quarantine)
    return summary, frames


def _read_spill(path: Path) -> pa.Table | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with pa.ipc.open_stream(str(path)) as reader:
        table = reader.read_all()
    return table if table.num_rows else None


def _label_dictionaries(table: pa.Table, label_columns: list[str]) -> pa.Table:
    """One chunk, label columns as dictionaries: pandas then receives categoricals, and
    every label check of validate_events runs once per distinct value."""
    table = table.combine_chunks()
    for i, name in enumerate(table.column_names):
        if name in label_columns and pa.types.is_string(table.schema.types[i]):
            table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
    return table


def _merge(total: LoadSummary, part: LoadSummary) -> None:
    total.rows_read += part.rows_read
    total.rows_kept += part.rows_kept
    for reason in QUARANTINE_REASONS:
        if part.quarantined.get(reason):
            total.quarantined[reason] = total.quarantined.get(reason, 0) + part.quarantined[reason]
    for name, n in part.unknown_event_types.items():
        total.unknown_event_types[name] = total.unknown_event_types.get(name, 0) + n
    total.absent_columns.update(part.absent_columns)


def _empty_scores(bundle: ModelBundle) -> pd.DataFrame:
    text = (CUSTOMER_ID, "stage", "churn_risk")
    columns = [CUSTOMER_ID, *bundle.output_columns]
    return pd.DataFrame({c: pd.Series(dtype="str" if c in text else "float64") for c in columns})


class _RangeSpill:
    """Quarantined rows spilled by row-number range, then read back range by range, sorted."""

    def __init__(self, directory: Path, n_ranges: int, n_rows: int) -> None:
        self.directory = directory
        self.n_ranges = n_ranges
        self.n_rows = max(n_rows, 1)
        self.columns: list[str] | None = None
        self.schema = pa.schema([])
        self._writers: dict[int, Any] = {}

    def append(self, bad: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = list(bad.columns)
            # row_number, reason, then the source cells as text (validate_events' layout)
            self.schema = pa.schema(
                [
                    pa.field(c, pa.int64() if c == "row_number" else pa.string())
                    for c in self.columns
                ]
            )
            self.directory.mkdir()
        bad = bad.reindex(columns=self.columns, fill_value="")
        rng = (bad["row_number"].to_numpy() - 1) * self.n_ranges // self.n_rows
        for r in np.unique(rng):
            table = pa.Table.from_pandas(bad[rng == r], schema=self.schema, preserve_index=False)
            writer = self._writers.get(int(r))
            if writer is None:
                path = str(self.directory / f"range-{int(r):05d}.arrow")
                writer = self._writers[int(r)] = pa.ipc.new_stream(path, self.schema)
            writer.write_table(table)

    def drain_sorted(self, into: _Appender) -> None:
        for writer in self._writers.values():
            writer.close()
        for r in sorted(self._writers):
            with pa.ipc.open_stream(str(self.directory / f"range-{r:05d}.arrow")) as reader:
                frame = reader.read_all().to_pandas()
            into.append(frame.sort_values("row_number", kind="stable", ignore_index=True))


# -- writing ---------------------------------------------------------------------------


class _Appender:
    """Append frames to a table in a hidden temporary file; rename it into place at commit.

    Parquet through one ``ParquetWriter`` (one row group per append), CSV through one
    text stream (gzip for ``.csv.gz``) with the header once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fmt = table_format(path)
        self._tmp: Path | None = None
        self._writer: Any = None
        self._file: Any = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        os.close(fd)
        self._tmp = Path(tmp)
        if self.fmt == "csv":
            gz = self.path.name.lower().endswith(".gz")
            self._file = (
                gzip.open(tmp, "wt", newline="") if gz else open(tmp, "w", newline="")  # noqa: SIM115
            )

    def append(self, frame: pd.DataFrame) -> None:
        if self._tmp is None:
            self._open()
        if self.fmt == "csv":
            frame.to_csv(self._file, index=False, header=self._writer is None)
            self._writer = True
        else:
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
            self._writer.write_table(table.cast(self._writer.schema))

    def _close(self) -> None:
        if self.fmt == "parquet" and self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None

    def commit(self, *, empty: pd.DataFrame | None = None) -> None:
        """Finish the file and rename it over :attr:`path` (``empty``: header when no rows)."""
        if self._tmp is None:
            if empty is None:
                return
            self.append(empty)
        self._close()
        assert self._tmp is not None
        os.replace(self._tmp, self.path)
        self._tmp = None

    def discard(self) -> None:
        """Remove the temporary file; the target path is left as it was."""
        try:
            self._close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                self._tmp = None


__all__ = [
    "DEFAULT_CHUNK_CUSTOMERS",
    "BatchSummary",
    "Progress",
    "features_file",
    "score_file",
]
