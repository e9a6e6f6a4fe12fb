"""Spilling an event log to disk by customer, so that no pass holds it whole.

:func:`partition` routes every row to one of *P* spill files (Arrow IPC) by a stable
hash of its customer id (:func:`route`), together with its row number in the source.
A customer's events therefore end up whole in one spill file however they are spread
through the log (a log sorted by time spreads every customer across all of it), and
within a customer they keep their order in the file. :class:`RangeSpill` does the
reverse for quarantined rows: spilled by row-number range, read back in source order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.batch_readers import EventSource, as_text, plain
from customer_lifecycle.features.prefetch import prefetch
from customer_lifecycle.features.sink import TableAppender

#: Target events per spill file; the number of spill files follows from the log's size.
ROWS_PER_PARTITION = 1 << 20
#: Most spill files open at once (above ~10^9 events the files grow instead).
MAX_PARTITIONS = 1024
#: Column added to every spill file: the row's 0-based number in the source log.
SOURCE_ROW = "__lifecycle_source_row__"


def partition(
    source: EventSource,
    spill: Path,
    partitions: int | None,
    *,
    check: Callable[[pa.RecordBatch], None],
    report: Callable[[int, int], None],
) -> tuple[list[Path], int]:
    """Route every row of ``source`` to a spill file in ``spill`` by a hash of its customer id.

    Parameters
    ----------
    source
        The event log, read in batches (a background thread reads ahead).
    spill
        An empty directory for the spill files ``part-NNNNN.arrow``.
    partitions
        Number of spill files; by default one per :data:`ROWS_PER_PARTITION` rows (an
        estimate from the first batch), at most :data:`MAX_PARTITIONS`.
    check
        Called with the first non-empty batch before any file is written; raises to
        refuse the log early (a missing column) rather than after the whole pass.
    report
        ``report(rows_read, estimated_total)`` after every batch and at the end.

    Returns
    -------
    paths : list of Path
        The spill files, in partition order (a file may be empty). Each holds the
        source's columns plus :data:`SOURCE_ROW`, the row's 0-based number in the log.
    n_rows : int
        Rows read.

    Raises
    ------
    ValueError
        When the log has no rows or cannot be read.
    """
    writers: list[Any] = []
    paths: list[Path] = []
    schema: pa.Schema | None = None
    cid = source.label_columns()[0]
    n_rows = 0
    takers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lifecycle-take")
    try:
        for raw_batch, fraction in prefetch(source.batches()):
            if raw_batch.num_rows == 0:
                continue
            batch = plain(raw_batch)
            if not writers:
                check(batch)
                estimate = batch.num_rows / max(fraction, 1e-9)
                n_parts = partitions or int(
                    min(MAX_PARTITIONS, max(1, math.ceil(estimate / ROWS_PER_PARTITION)))
                )
                schema = batch.schema.append(pa.field(SOURCE_ROW, pa.int64()))
                for p in range(n_parts):
                    paths.append(spill / f"part-{p:05d}.arrow")
                    writers.append(pa.ipc.new_stream(str(paths[-1]), schema))
            order, starts = route(batch.column(cid), len(writers))
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
            report(n_rows, max(n_rows, round(n_rows / max(fraction, 1e-9))))
    finally:
        takers.shutdown(wait=True)
        for writer in writers:
            writer.close()
    if n_rows == 0:
        raise ValueError(f"{source.label} has no rows")
    report(n_rows, n_rows)
    return paths, n_rows


def route(ids: pa.Array, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouping rows by spill file, and each file's start in that order.

    Parameters
    ----------
    ids
        Customer ids (any type; compared as text, so ``7`` and ``"7"`` go together).
    n_parts
        Number of spill files.

    Returns
    -------
    order : numpy.ndarray
        Row indices, those of file 0 first, each file's rows in their original order.
    starts : numpy.ndarray
        ``n_parts + 1`` offsets: file ``p``'s rows are ``order[starts[p]:starts[p + 1]]``.
    """
    if not pa.types.is_string(ids.type):
        ids = as_text(pa.chunked_array([ids])).combine_chunks()
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


def read_spill(path: Path) -> pa.Table | None:
    """A spill file's rows, or ``None`` when it is missing or empty."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with pa.ipc.open_stream(str(path)) as reader:
        table = reader.read_all()
    return table if table.num_rows else None


class RangeSpill:
    """Quarantined rows spilled by row-number range, then read back range by range, sorted.

    Rows arrive in chunk order (by customer), not in source order; ``n_ranges`` files
    of about ``n_rows / n_ranges`` source rows each keep the final sort small.
    """

    def __init__(self, directory: Path, n_ranges: int, n_rows: int) -> None:
        self.directory = directory
        self.n_ranges = n_ranges
        self.n_rows = max(n_rows, 1)
        self.columns: list[str] | None = None
        self.schema = pa.schema([])
        self._writers: dict[int, Any] = {}

    def append(self, bad: pd.DataFrame) -> None:
        """Spill quarantined rows (``validate_events``' layout, 1-based ``row_number``)."""
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

    def drain_sorted(self, into: TableAppender) -> None:
        """Append every spilled row to ``into`` in ``row_number`` order, range by range."""
        for writer in self._writers.values():
            writer.close()
        for r in sorted(self._writers):
            with pa.ipc.open_stream(str(self.directory / f"range-{r:05d}.arrow")) as reader:
                frame = reader.read_all().to_pandas()
            into.append(frame.sort_values("row_number", kind="stable", ignore_index=True))


__all__ = [
    "MAX_PARTITIONS",
    "ROWS_PER_PARTITION",
    "SOURCE_ROW",
    "RangeSpill",
    "partition",
    "read_spill",
    "route",
]
