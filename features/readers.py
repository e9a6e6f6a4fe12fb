"""Read an event file (CSV, Parquet or JSON Lines) into a frame of its source columns.

Only reading happens here: the columns keep their source names and cells their source
values (CSV cells as text), for :mod:`features.validation` to check.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        else:
            table = _read_jsonl(path, label)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {label}: {one_line(exc)}") from None
    if isinstance(table, pd.DataFrame):
        frame = table
    else:
        if table.num_rows == 0:
            raise ValueError(f"{label} has no rows")
        # Dictionary-encode label columns in Arrow: pandas then receives categoricals
        # and every later label check runs once per distinct value.
        for i, name in enumerate(table.column_names):
            col = table.column(i)
            if name in label_columns and (
                pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            ):
                table = table.set_column(i, name, pc.dictionary_encode(col))
        frame = table.to_pandas(split_blocks=True)
    if len(frame) == 0:
        raise ValueError(f"{label} has no rows")
    return frame


def _read_csv(path: Path, label: str, label_columns: set[str]) -> pa.Table:
    import pyarrow.csv as pcsv

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{label} has no rows")
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

    try:
        table = pjson.read_json(path)
    except pa.ArrowInvalid:
        # Arrow needs one type per field; a log that mixes them (ids as numbers and
        # strings, an amount written as text) is read by the standard library instead.
        return _read_jsonl_python(path, label)
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
        if not isinstance(record, dict):
            raise ValueError(f"{label} line {line_number} is not a JSON object")
        records.append(record)
    return records


def _read_jsonl_python(path: Path, label: str) -> pd.DataFrame:
    with open(path, encoding="utf-8-sig") as fh:
        records = json_records(fh, label=label)
    if not records:
        raise ValueError(f"{label} has no rows")
    return pd.json_normalize(records)
