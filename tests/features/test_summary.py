"""Tests for the load summary (features.summary)."""

from __future__ import annotations

import json
from pathlib import Path

from customer_lifecycle.features.summary import LoadSummary


def test_summary_reads_as_one_line():
    summary = LoadSummary(
        source="x.csv",
        rows_read=1000,
        rows_kept=990,
        quarantined={"missing_customer_id": 3, "unparseable_timestamp": 7},
        quarantine_path=Path("x.quarantine.csv"),
    )
    assert str(summary) == (
        "read 1,000 rows from x.csv: kept 990, quarantined 10 "
        "(unparseable_timestamp: 7, missing_customer_id: 3) -> x.quarantine.csv"
    )
    assert summary.to_dict()["quarantine_path"] == "x.quarantine.csv"
    assert json.loads(json.dumps(summary.to_dict()))["rows_kept"] == 990
