"""A log for the streaming tests: sorted by time (every customer spread through the whole
file), with bad rows planted at known rows; written as CSV, Parquet or JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.features import SPAN_DAYS, START, synthetic_log

AS_OF = (START + pd.Timedelta(days=SPAN_DAYS - 30)).isoformat()
#: Rows (0-based) replaced by bad rows, and the reason each must be quarantined under.
BAD_ROWS = {
    3: ("", "2024-01-05T00:00:00Z", "page_view", "", "missing_customer_id"),
    250: ("c0000001", "not a time", "purchase", "5", "unparseable_timestamp"),
    2_000: ("c0000002", "2024-02-01T00:00:00Z", "purchase", "-3", "negative_purchase_amount"),
    7_777: ("c0000003", "2024-03-01T00:00:00Z", "teleport", "", "unknown_event_type"),
    11_999: ("c0000004", "2024-03-02T00:00:00Z", "page_view", "lots", "unparseable_amount"),
}


def raw_log() -> pd.DataFrame:
    """12,000 events of 150 customers over two years, sorted by time, as text."""
    events = synthetic_log(12_000, 150, seed=5)
    raw = pd.DataFrame(
        {
            "customer_id": events["customer_id"].astype(str),
            "timestamp": events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event_type": events["event_type"].astype(str),
            "amount": events["amount"].map(lambda a: "" if np.isnan(a) else repr(a)),
        }
    )
    for row, (*values, _) in BAD_ROWS.items():
        raw.iloc[row] = values
    return raw


def write_log(raw: pd.DataFrame, path: Path) -> Path:
    """Write ``raw`` in the format of ``path``'s suffix (``.csv``, ``.parquet``, else JSON
    lines); Parquet in row groups of 1,000 rows."""
    if path.suffix == ".csv":
        raw.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        raw.to_parquet(path, index=False, row_group_size=1_000)
    else:
        with open(path, "w") as fh:
            for record in raw.to_dict(orient="records"):
                fh.write(json.dumps(record) + "\n")
    return path


def leftovers(directory: Path) -> list[str]:
    """Hidden files and directories (temporary outputs, spill directories) in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
