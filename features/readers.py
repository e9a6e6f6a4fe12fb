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
from customer_lifecycle.features.mapping import ColumnSource, EventMapping, FieldSource
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


def read_event_frame(
    path: Path,
    fmt: str,
    label: str,
    *,
    label_columns: set[str],
    mapping: EventMapping | None = None,
) -> pd.DataFrame:
    """Read a whole event file as source columns; ``ValueError`` naming ``label`` if unreadable.

    ``fmt`` is :func:`event_format`'s answer. Columns in ``label_columns`` (ids, event
    names, channels) come back as categoricals, so later checks run once per distinct
    value; an empty file is refused. The sources of ``mapping`` that are not plain
    columns (nested fields, key/value lookups, first-of lists) are resolved into
    columns named :meth:`EventMapping.source_column` (:func:`resolve_sources`); the
    nested columns themselves are then left out.
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
            table = _read_jsonl(path, label, mapping)
        if isinstance(table, pa.Table):
            table = resolve_sources(table, mapping, label)
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


def _read_jsonl(path: Path, label: str, mapping: EventMapping | None) -> pa.Table | pd.DataFrame:
    import pyarrow.json as pjson

    with open(path, "rb") as fh:
        line = 1
        while lines := fh.readlines(JSON_BLOCK_BYTES):
            check_json_depth(b"".join(lines), first_line=line, label=label)
            line += len(lines)
    try:
        table = pjson.read_json(path)
        # Arrow's JSON reader has built malformed list arrays from some hostile logs;
        # those are read by the standard library too
        table.validate(full=True)
        table = flatten_json(resolve_sources(table, mapping, label))
    except pa.ArrowInvalid:
        # Arrow needs one type per field; a log that mixes them (ids as numbers and
        # strings, an amount written as text) is read by the standard library instead.
        return _read_jsonl_python(path, label, mapping)
    return table


def flatten_json(table: pa.Table) -> pa.Table:
    """Nested JSON objects as dotted columns (``properties.total``), as documented."""
    while any(pa.types.is_struct(t) for t in table.schema.types):
        table = table.flatten()
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


def _read_jsonl_python(path: Path, label: str, mapping: EventMapping | None) -> pd.DataFrame:
    with open(path, encoding="utf-8-sig") as fh:
        records = json_records(fh, label=label)
    if not records:
        raise ValueError(f"{label} has no rows")
    resolved = resolve_records(records, mapping, label)
    frame = pd.json_normalize(records)
    for name, values in resolved.items():
        frame[name] = pd.Series(values, index=frame.index, dtype=object)
    return frame


# -- sources of a mapping ---------------------------------------------------------------


def resolve_sources(
    table: pa.Table | pa.RecordBatch, mapping: EventMapping | None, label: str
) -> Any:
    """Add a column per mapped source that is not a plain column, with its values.

    Each contract column whose :class:`~features.mapping.ColumnSource` is a nested
    field, a key/value lookup or a first-of list is resolved as
    :class:`~features.mapping.FieldSource` says, with Arrow compute (no Python per row),
    and added under :meth:`EventMapping.source_column`; a source the data lacks adds
    nothing, so validation reports it as for a missing column. Nested columns are
    then dropped (what remains is flat).

    Raises
    ------
    ValueError
        Naming the source, when its path leads through a value that is not a record or
        its key lookup through one that is not a list of records.
    """
    if mapping is None or mapping.is_plain:
        return table
    added: dict[str, pa.Array | pa.ChunkedArray] = {}
    for source in dict.fromkeys(mapping.columns.values()):
        if source.is_plain or source.name in table.schema.names:
            continue
        values = resolve_column(table, source, label)
        if values is not None:
            added[source.name] = values
    # nested columns are left out (their text would be of no use, and slow to make),
    # except one a plain source names: validation shows it as text, as ever
    plain = {s.name for s in mapping.columns.values() if s.is_plain}
    keep = [
        name
        for name, kind in zip(table.schema.names, table.schema.types, strict=True)
        if name in plain or not pa.types.is_nested(kind)
    ]
    arrays = [table.column(n) for n in keep] + list(added.values())
    names = keep + list(added)
    if isinstance(table, pa.RecordBatch):
        return pa.RecordBatch.from_arrays([_array(a) for a in arrays], names=names)
    return pa.table(dict(zip(names, arrays, strict=True))) if names else table.select([])


def resolve_column(
    table: pa.Table | pa.RecordBatch, source: ColumnSource, label: str
) -> pa.Array | pa.ChunkedArray | None:
    """The values of one column source (``None`` when the data has none of its sources)."""
    found = [v for v in (_resolve_field(table, s, label) for s in source.first_of) if v is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    found = [_blank_as_null(a) for a in _one_type(found)]
    return pc.coalesce(*found)


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _resolve_field(
    table: pa.Table | pa.RecordBatch, source: FieldSource, label: str
) -> pa.Array | pa.ChunkedArray | None:
    names = table.schema.names
    if source.text in names:  # a column of that very name (CSV, flattened JSON) wins
        return table.column(source.text)
    if source.column not in names:
        return None
    values = _walk(table.column(source.column), source.path, source, label)
    if values is None or source.key is None:
        return values
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)) or not (
        pa.types.is_struct(values.type.value_type)
    ):
        raise ValueError(
            f"{label}: source {source.text!r} looks up a key in "
            f"{'.'.join((source.column, *source.path))!r}, which is {values.type}, "
            "not a list of records"
        )
    entry = _lookup(_array(values), source.key_field, source.key, source, label)
    if entry is None:
        return None
    values = _walk(entry, source.value_path, source, label)
    if values is not None and pa.types.is_struct(values.type):
        values = _coalesce_fields(_array(values))
    return values


def _walk(
    values: pa.Array | pa.ChunkedArray, path: tuple[str, ...], source: FieldSource, label: str
) -> pa.Array | pa.ChunkedArray | None:
    """Follow ``path`` through nested records; ``None`` where a field does not exist."""
    for depth, name in enumerate(path):
        if not pa.types.is_struct(values.type):
            where = ".".join((source.column, *path[:depth])) if source.key is None else source.text
            raise ValueError(
                f"{label}: source {source.text!r} needs {where!r} to be a record with a field "
                f"{name!r}, but it is {values.type}"
            )
        if values.type.get_field_index(name) < 0:
            return None
        values = pc.struct_field(values, name)  # null where the record itself is null
    return values


def _lookup(
    lists: pa.Array, key_field: str, key: str, source: FieldSource, label: str
) -> pa.Array | None:
    """Per row, the first entry of a list of records whose ``key_field`` is ``key``."""
    entry_type = lists.type.value_type
    if entry_type.get_field_index(key_field) < 0:
        return None
    entries = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists))
    keys = pc.struct_field(entries, key_field)
    hits = np.flatnonzero(
        np.asarray(pc.fill_null(pc.equal(pc.cast(keys, pa.string()), key), False))
    )
    rows, first = np.unique(parents[hits], return_index=True)
    take = np.full(len(lists), -1, dtype=np.int64)
    take[rows] = hits[first]
    return entries.take(pa.array(take, mask=take < 0))


def _coalesce_fields(record: pa.Array) -> pa.Array:
    """The first non-null field of each record, in declared order (as text if types differ)."""
    fields = [pc.struct_field(record, i) for i in range(record.type.num_fields)]
    if not fields:
        return pa.nulls(len(record), pa.string())
    return pc.coalesce(*_one_type(fields))


def _one_type(arrays: list[Any]) -> list[Any]:
    """The arrays unchanged when they share a type, else all as text."""
    if len({a.type for a in arrays}) == 1:
        return arrays
    return [_as_text_any(a) for a in arrays]


def _as_text_any(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    text = as_text(chunked)
    return text if isinstance(values, pa.ChunkedArray) else text.combine_chunks()


def _blank_as_null(values: Any) -> Any:
    if not pa.types.is_string(values.type):
        return values
    blank = pc.equal(pc.utf8_trim_whitespace(values), "")
    return pc.if_else(blank, pa.scalar(None, values.type), values)


def resolve_records(
    records: list[dict[str, Any]], mapping: EventMapping | None, label: str
) -> dict[str, list[Any]]:
    """:func:`resolve_sources` for JSON records read by the standard library (a log whose
    fields change type from line to line, which Arrow cannot read): resolved name ->
    values; a source no record has is left out."""
    if mapping is None or mapping.is_plain:
        return {}
    out: dict[str, list[Any]] = {}
    for source in dict.fromkeys(mapping.columns.values()):
        if source.is_plain:
            continue
        present = [any(_has_root(r, s) for r in records) for s in source.first_of]
        if not any(present):
            continue
        sources = [s for s, p in zip(source.first_of, present, strict=True) if p]
        values = []
        for record in records:
            value = None
            for s in sources:
                value = _record_value(record, s, label)
                if value is not None and not (isinstance(value, str) and value.strip() == ""):
                    break
            values.append(None if value is None else value if len(sources) == 1 else str(value))
        out[source.name] = values
    return out


def _has_root(record: dict[str, Any], source: FieldSource) -> bool:
    return source.text in record or source.column in record


def _record_value(record: dict[str, Any], source: FieldSource, label: str) -> Any:
    if source.text in record:
        return record[source.text]
    value: Any = record.get(source.column)
    value = _record_walk(value, source.path, source, label)
    if source.key is None or value is None:
        return value
    if not isinstance(value, list):
        raise ValueError(
            f"{label}: source {source.text!r} looks up a key in a value that is not a list"
        )
    entry = next(
        (e for e in value if isinstance(e, dict) and str(e.get(source.key_field)) == source.key),
        None,
    )
    value = _record_walk(entry, source.value_path, source, label)
    if isinstance(value, dict):
        value = next((v for v in value.values() if v is not None), None)
    return value


def _record_walk(value: Any, path: tuple[str, ...], source: FieldSource, label: str) -> Any:
    for name in path:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(
                f"{label}: source {source.text!r} needs a record with a field {name!r}, "
                f"got {type(value).__name__}"
            )
        value = value.get(name)
    return value
