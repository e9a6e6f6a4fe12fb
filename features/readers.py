"""Read an event file (CSV, Parquet or JSON Lines) into a frame of its source columns.

Only reading happens here: the columns keep their source names and cells their source
values (CSV cells as text), for :mod:`features.validation` to check.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.messages import one_line

#: Event file name endings -> format (``csv``, ``parquet`` or ``jsonl``).
EVENT_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SUPPORTED = ".csv, .csv.gz, .parquet or .pq (a file or a directory), .jsonl, .ndjson"
#: Bytes at the head of a CSV log read to learn its columns and the length of its rows.
CSV_HEAD_BYTES = 1 << 20
#: Deepest nesting of objects and arrays a JSON line may have. Arrow's JSON parser
#: recurses once per level and overflows the stack (the process dies) at some tens of
#: thousands of levels, Python's stops near a thousand; event records need a handful.
MAX_JSON_DEPTH = 100
#: JSON Lines are checked and read in runs of lines of about this many bytes.
JSON_BLOCK_BYTES = 32 << 20
#: Errors of reading a file that say the file is bad, not the program: a gzip stream that
#: is cut short (``EOFError``) or corrupt (``zlib.error``), Arrow's parse errors.
READ_ERRORS = (pa.ArrowException, OSError, EOFError, zlib.error, UnicodeDecodeError)


def event_format(path: Path) -> str:
    """``csv``, ``parquet`` or ``jsonl`` from an events file name (a directory is Parquet)."""
    if path.is_dir():
        return "parquet"
    name = path.name.lower()
    for ext in sorted(EVENT_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return EVENT_FORMATS[ext]
    raise ValueError(f"cannot read events file {path}: supported formats are {_SUPPORTED}")


def read_event_frame(path: Path, fmt: str, label: str, *, label_columns: set[str]) -> pd.DataFrame:
    """Read a whole event file as source columns; ``ValueError`` naming ``label`` if unreadable.

    ``fmt`` is :func:`event_format`'s answer. Columns in ``label_columns`` (ids, event
    names, channels) come back as categoricals, so later checks run once per distinct
    value; an empty file is refused.
    """
    try:
        if fmt == "csv":
            table = _read_csv(path, label, label_columns)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            # Parquet readers trust the file: text that is not UTF-8 in a damaged file
            # would fail later, far from here (and not as a ValueError)
            table.validate(full=True)
        else:
            table = _read_jsonl(path, label)
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {label}: {one_line(exc)}") from None
    if isinstance(table, pd.DataFrame):
        frame = table
    else:
        if table.num_rows == 0:
            raise ValueError(f"{label} has no rows")
        # Dictionary-encode label columns in Arrow: pandas then receives categoricals
        # and every later label check runs once per distinct value. Nested cells (a
        # list where a time should be) become text, as the streaming reader has them.
        for i, name in enumerate(table.column_names):
            col = table.column(i)
            if pa.types.is_nested(col.type):
                col = as_text(col)
                table = table.set_column(i, name, col)
            if name in label_columns and (
                pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            ):
                table = table.set_column(i, name, pc.dictionary_encode(col))
        frame = table.to_pandas(split_blocks=True)
    if len(frame) == 0:
        raise ValueError(f"{label} has no rows")
    return frame


def as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` as strings (Arrow's cast, else Python's ``str`` of each value)."""
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = column.to_pylist()
        return pa.chunked_array(
            [pa.array([None if v is None else str(v) for v in values], pa.string())]
        )


@dataclass
class CsvHead:
    """What the head of a CSV log tells: its columns, and how long its rows are."""

    #: Column names, as Arrow's CSV reader parses the header row.
    names: list[str]
    #: Data rows per byte of the file as stored (compressed bytes for ``.csv.gz``).
    rows_per_byte: float


def csv_head(path: Path, label: str) -> CsvHead:
    """Read the first :data:`CSV_HEAD_BYTES` of a CSV log: its header and row length.

    The names come from Arrow's own parser, so a reader given one type per name reads
    every column as that type (no column is left to per-block type inference, which
    could make a later block fail). ``ValueError`` names ``label`` when the head cannot
    be read or the file has no header.
    """
    import pyarrow.csv as pcsv

    try:
        with open(path, "rb") as raw:
            text: Any = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
            head = text.read(CSV_HEAD_BYTES)
            whole = len(head) < CSV_HEAD_BYTES or not text.read(1)
            stored = max(raw.tell(), 1)
        if not head.strip():
            raise ValueError(f"{label} has no rows")
        if not whole:
            end = head.rfind(b"\n")
            if end < 0:
                raise ValueError(
                    f"cannot read {label}: the header row is longer than {CSV_HEAD_BYTES:,} bytes"
                )
            head = head[: end + 1]
        names = pcsv.open_csv(
            io.BytesIO(head),
            read_options=pcsv.ReadOptions(block_size=len(head) + 1, use_threads=False),
            convert_options=pcsv.ConvertOptions(include_columns=[], strings_can_be_null=False),
        ).schema.names
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {label}: {one_line(exc)}") from None
    rows = max(head.count(b"\n") - 1, 1)
    return CsvHead(names=list(names), rows_per_byte=rows / stored)


def _read_csv(path: Path, label: str, label_columns: set[str]) -> pa.Table:
    import pyarrow.csv as pcsv

    header = csv_head(path, label).names
    # Every column is read as text: ids such as "007" keep their zeros, and the
    # quarantine file shows cells exactly as the source wrote them.
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {name: (dictionary if name in label_columns else pa.string()) for name in header}
    return pcsv.read_csv(
        path,
        # Large blocks keep the number of per-block dictionaries that pandas must
        # unify small; that unification dominates with the default 1 MiB blocks.
        read_options=pcsv.ReadOptions(block_size=16 << 20),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )


def _read_jsonl(path: Path, label: str) -> pa.Table | pd.DataFrame:
    import pyarrow.json as pjson

    with open(path, "rb") as fh:
        line = 1
        while lines := fh.readlines(JSON_BLOCK_BYTES):
            check_json_depth(b"".join(lines), first_line=line, label=label)
            line += len(lines)
    try:
        table = pjson.read_json(path)
        while any(pa.types.is_struct(t) for t in table.schema.types):
            table = table.flatten()
        # Arrow's JSON reader has built malformed list arrays from some hostile logs;
        # those are read by the standard library too
        table.validate(full=True)
    except pa.ArrowInvalid:
        # Arrow needs one type per field; a log that mixes them (ids as numbers and
        # strings, an amount written as text) is read by the standard library instead.
        return _read_jsonl_python(path, label)
    return table


def json_records(
    lines: Iterable[str | bytes], *, first_line: int = 1, label: str
) -> list[dict[str, Any]]:
    """Parse JSON Lines into objects, skipping blank lines.

    Raises ``ValueError`` naming ``label`` and the line number of the first line that is
    not JSON or not a JSON object.
    """
    records = []
    for line_number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{label} line {line_number} is not JSON: {exc.msg}") from None
        except RecursionError:  # check_json_depth lets no such line through; kept as a net
            raise ValueError(f"{label} line {line_number} is nested too deeply") from None
        if not isinstance(record, dict):
            raise ValueError(f"{label} line {line_number} is not a JSON object")
        records.append(record)
    return records


def check_json_depth(block: bytes, *, first_line: int, label: str) -> None:
    """Refuse JSON Lines nested deeper than :data:`MAX_JSON_DEPTH` before any parser sees
    them: ``ValueError`` naming ``label`` and the line (``first_line`` is the number of
    the block's first line)."""
    if block.count(b"{") + block.count(b"[") <= MAX_JSON_DEPTH:
        return  # too few brackets to nest that deep
    line = _first_too_deep(np.frombuffer(block, dtype=np.uint8), MAX_JSON_DEPTH)
    if line >= 0:
        raise ValueError(
            f"{label} line {first_line + line} is nested more than {MAX_JSON_DEPTH} levels deep"
        )


@numba.njit(cache=True, nogil=True)
def _first_too_deep(data, limit):  # type: ignore[no-untyped-def]
    """0-based index of the first line whose brackets (outside strings) nest deeper than
    ``limit``, or -1. A raw newline always ends a record: JSON escapes it in strings."""
    depth = 0
    line = 0
    in_string = False
    escaped = False
    for i in range(data.shape[0]):
        c = data[i]
        if c == 10:  # \n
            line += 1
            depth = 0
            in_string = False
            escaped = False
        elif in_string:
            if escaped:
                escaped = False
            elif c == 92:  # backslash
                escaped = True
            elif c == 34:  # "
                in_string = False
        elif c == 34:
            in_string = True
        elif c == 123 or c == 91:  # { [
            depth += 1
            if depth > limit:
                return line
        elif (c == 125 or c == 93) and depth > 0:  # } ]
            depth -= 1
    return -1


def _read_jsonl_python(path: Path, label: str) -> pd.DataFrame:
    with open(path, encoding="utf-8-sig") as fh:
        records = json_records(fh, label=label)
    if not records:
        raise ValueError(f"{label} has no rows")
    return pd.json_normalize(records)
