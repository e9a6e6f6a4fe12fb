"""Features of a log too big for memory: built chunk by chunk over a spilled log.

:func:`features_file` (``lifecycle features --chunk-customers``) and batch scoring
(:func:`scoring.batch.score_file`) never hold the whole log. :func:`stream_chunks`, which
both run on, makes two passes:

1. **Partition.** The log is read in batches (:mod:`features.batch_readers`: Parquet
   row groups, CSV blocks, runs of JSON lines). Each row is routed by a stable hash of
   its customer id to one of *P* spill files (:mod:`features.spill`: Arrow IPC, in a
   hidden directory next to the output), together with its row number in the source
   file. A customer's events therefore end up whole in one spill file however they are
   spread through the log (a log sorted by time spreads every customer across all of
   it).
2. **Apply.** Spill files are gathered until about ``chunk_customers`` customers are in
   hand; the chunk is checked with :func:`features.validation.validate_events` (bad rows go
   to the quarantine file under their *source* row numbers) and handed to the caller's
   ``apply`` (build features; build features and score them), whose rows are appended
   to a temporary output file (:mod:`features.sink`).

Validation runs per chunk rather than per read batch because label checks cost one
operation per *distinct* customer: a customer sits in one chunk but in many batches.
Within a customer, events keep their order in the file, so every value is bit for bit
what the in-memory path (load the log, build features) gives.

Before anything is written, the output and the quarantine path are checked against the
log, the mapping and each other (:func:`features.paths.refuse_overlaps`): no run can
overwrite or truncate its own input. The output and the quarantine file are renamed into
place only when everything has succeeded. On any error, ``KeyboardInterrupt`` included
(the command line turns SIGTERM and SIGHUP into an exception too), the temporary files
and the spill directory are removed and no output is left behind (an earlier output at
the same path is untouched). Only a process killed outright (``SIGKILL``) can leave
hidden ``.<name>.*.tmp`` files and a ``.<name>.spill-*`` directory; they never carry the
output's name, and a rerun does not need them gone.

Peak memory is set by a few read batches (about a million rows each) and one chunk of
``chunk_customers`` customers' events and output rows (at least one spill file, about
:data:`features.spill.ROWS_PER_PARTITION` events), not by the size of the log.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.batch_readers import EventSource, open_source
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import default_quarantine_path
from customer_lifecycle.features.io import table_format
from customer_lifecycle.features.mapping import EventMapping, load_mapping
from customer_lifecycle.features.paths import refuse_overlaps
from customer_lifecycle.features.sink import TableAppender
from customer_lifecycle.features.spill import (
    SOURCE_ROW,
    RangeSpill,
    partition,
    read_spill,
)
from customer_lifecycle.features.summary import LoadSummary
from customer_lifecycle.features.validation import QUARANTINE_REASONS, validate_events

#: Customers whose events and output rows are held in memory at once (default).
DEFAULT_CHUNK_CUSTOMERS = 50_000

#: ``progress(phase, done, total)``: phase ``"reading events"`` counts source rows
#: (``total`` is an estimate for CSV and JSON lines until the end), phase ``"scoring"``
#: counts spill files (the name the command line shows, for features too).
Progress = Callable[[str, int, int], None]


@dataclass
class StreamSummary:
    """What one :func:`stream_chunks` run did.

    Attributes
    ----------
    load
        Rows read, kept and quarantined (by reason), and where the quarantine file is.
    customers
        Rows written: customers with at least one event before ``as_of``.
    out
        The output file.
    partitions
        Spill files the log was partitioned into.
    seconds
        Wall time of the run.
    """

    load: LoadSummary
    customers: int = 0
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

    def _note(self) -> str:
        """Said after the output path (subclasses add their counts)."""
        return ""

    def __str__(self) -> str:
        return (
            f"{self.load}\nwrote {self.customers:,} customers to {self.out}{self._note()}"
            f" in {self.seconds:.1f} s"
        )


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
) -> StreamSummary:
    """Build features for every customer with an event before ``as_of``, in bounded memory.

    Writes ``customer_id`` and the definition's columns, one row per customer, in
    chunks (sorted within each chunk); the values equal
    :func:`features.engine.build_features` on the whole log. ``out`` is written
    atomically, as :func:`stream_chunks` says; ``lifecycle features --chunk-customers``
    runs this.

    Parameters
    ----------
    events_path, as_of, out
        Event log, cutoff (ISO 8601; naive is UTC) and output table (``.parquet`` or
        ``.csv``/``.csv.gz``).
    definition
        Feature definition (default: the packaged one).
    mapping, unknown_events, progress, chunk_customers, quarantine_path, partitions
        As for :func:`stream_chunks`.

    Returns
    -------
    StreamSummary
        Row counts, customers written, the output path.
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
    _, summary = stream_chunks(
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


def stream_chunks(
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
) -> tuple[pd.DataFrame | None, StreamSummary]:
    """Partition the log by customer, then ``apply`` each chunk of clean events and
    append its rows to ``out``; commit ``out`` and the quarantine only at the end.

    Parameters
    ----------
    events_path
        Event log: ``.csv``, ``.csv.gz``, ``.parquet``/``.pq`` (file or directory),
        ``.jsonl``/``.ndjson``. Read in batches, never whole.
    out
        Output table, ``.parquet`` or ``.csv``/``.csv.gz``.
    apply
        Turns one chunk of validated events (whole customers) into the rows to write.
    empty
        The table written when no chunk gives a row (its columns and types).
    mapping, unknown_events
        As for :func:`features.events.load_events`.
    progress
        ``progress(phase, done, total)``; see :data:`Progress`.
    chunk_customers
        About this many customers are validated and handed to ``apply`` at once (at
        least one spill file's worth): the knob for peak memory.
    quarantine_path
        Where bad rows go (default ``<stem>.quarantine.csv`` beside the log); written
        only when a row is quarantined, in source row order. For speed, only the
        columns the event contract reads are kept (under their source names).
    partitions
        Number of spill files; by default one per
        :data:`features.spill.ROWS_PER_PARTITION` rows.
    keep
        Also return every row written as one frame (memory then grows with the output).

    Returns
    -------
    rows : pandas.DataFrame or None
        The rows written to ``out`` (``None`` unless ``keep``).
    summary : StreamSummary
        Row counts, rows written, spill files, wall time.

    Raises
    ------
    ValueError
        On a bad option, an unreadable or empty log, a missing required column, or an
        output or quarantine path that is (or lies inside) the log, the mapping or the
        other output (:func:`features.paths.refuse_overlaps`); nothing is written.
    """
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
    q_target = (
        Path(quarantine_path) if quarantine_path is not None else default_quarantine_path(path)
    )
    mapping_file = mapping if isinstance(mapping, str | Path) and Path(mapping).is_file() else None
    refuse_overlaps(
        [("the events file", path), ("the mapping", mapping_file)],
        [("the output", out), ("the quarantine file", q_target)],
    )
    source = open_source(
        path, mapping if isinstance(mapping, EventMapping) else load_mapping(mapping)
    )
    report = progress or (lambda phase, done, total: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.spill-"))
    output = TableAppender(out)
    quarantine = TableAppender(q_target)

    def check(batch: pa.RecordBatch) -> None:
        # Refuse a log without a required column now, with load_events' message,
        # rather than after the whole file has been partitioned.
        validate_events(
            batch.slice(0, 1).to_pandas(),
            mapping=source.mapping,
            source=f"file {source.path}",
        )

    try:
        parts, n_rows = partition(
            source,
            spill,
            partitions,
            check=check,
            report=lambda done, total: report("reading events", done, total),
        )
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


def _apply_partitions(
    parts: list[Path],
    n_rows: int,
    *,
    source: EventSource,
    unknown_events: str,
    apply: Callable[[pd.DataFrame], pd.DataFrame],
    chunk_customers: int,
    spill: Path,
    output: TableAppender,
    quarantine: TableAppender,
    keep: bool,
    report: Progress,
) -> tuple[StreamSummary, list[pd.DataFrame]]:
    load = LoadSummary(source=str(source.path), rows_read=0, rows_kept=0)
    summary = StreamSummary(load=load, partitions=len(parts))
    frames: list[pd.DataFrame] = []
    # Quarantined rows are kept in row-number ranges, one per spill file, and each
    # range is sorted at the end, so the file lists them in source order.
    q_ranges = RangeSpill(spill / "quarantine", len(parts), n_rows)
    pending: list[pa.Table] = []
    pending_customers = 0

    def flush() -> None:
        nonlocal pending, pending_customers
        if not pending:
            return
        table = _label_dictionaries(pa.concat_tables(pending), source.label_columns())
        pending, pending_customers = [], 0
        rows = table.column(SOURCE_ROW).to_numpy()
        frame = table.drop_columns([SOURCE_ROW]).to_pandas(split_blocks=True, self_destruct=True)
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

    # One chunk's rows are made (``apply``: features, scores) in a worker thread while
    # this thread reads and checks the next chunk: a model's trees run without the GIL
    # on one core, the reading mostly in Arrow, so both cores stay busy.
    in_flight: list[Future[None]] = []
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifecycle-score")
    try:
        report("scoring", 0, len(parts))
        cid = source.label_columns()[0]
        for i, part in enumerate(parts):
            table = read_spill(part)
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


__all__ = [
    "DEFAULT_CHUNK_CUSTOMERS",
    "Progress",
    "StreamSummary",
    "features_file",
    "stream_chunks",
]
