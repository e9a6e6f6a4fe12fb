"""Event rows and the writers that put them in every supported file format (feature tests)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROWS = [
    {
        "customer_id": "007",
        "timestamp": "2024-01-01T10:00:00+02:00",
        "event_type": "page_view",
        "amount": "",
        "channel": "web",
        "note": "extra column, dropped",
    },
    {
        "customer_id": "0042",
        "timestamp": "2024-01-02T08:30:00Z",
        "event_type": "purchase",
        "amount": "19.99",
        "channel": "app",
        "note": "x",
    },
    {
        "customer_id": "007",
        "timestamp": "2024-01-03T12:00:00",
        "event_type": "refund",
        "amount": "-5.5",
        "channel": "",
        "note": "y",
    },
    {
        "customer_id": "c-3",
        "timestamp": "2024-01-04T00:00:00.250Z",
        "event_type": "login",
        "amount": "",
        "channel": "web",
        "note": "z",
    },
]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows, dtype="str").to_csv(path, index=False)
    return path


def write_csv_gz(path: Path, rows: list[dict[str, str]]) -> Path:
    text = pd.DataFrame(rows, dtype="str").to_csv(index=False)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


def typed_table(rows: list[dict[str, str]]) -> pa.Table:
    # Parquet and JSON carry real numbers; blank amounts become nulls.
    frame = pd.DataFrame(rows, dtype="str")
    frame["amount"] = pd.to_numeric(frame["amount"].replace("", None))
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    pq.write_table(typed_table(rows), path)
    return path


def write_parquet_dir(path: Path, rows: list[dict[str, str]]) -> Path:
    path.mkdir()
    table = typed_table(rows)
    pq.write_table(table.slice(0, 2), path / "part-0.parquet")
    pq.write_table(table.slice(2), path / "part-1.parquet")
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    lines = []
    for row in rows:
        record: dict[str, object] = dict(row)
        if "amount" in record:
            record["amount"] = float(row["amount"]) if row["amount"] else None
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message
