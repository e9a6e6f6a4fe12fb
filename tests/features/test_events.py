"""Tests for the event loader (docs/events.md): canonical frame, mapping, quarantine file."""

from __future__ import annotations

import pandas as pd
import pytest
from customer_lifecycle.features.contract import is_canonical_frame
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import EventMapping

from tests.features.event_files import (
    ROWS,
    write_csv,
)


def test_frame_has_canonical_dtypes_and_order(tmp_path):
    events, _ = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert is_canonical_frame(events)
    assert list(events.columns) == ["customer_id", "timestamp", "event_type", "amount", "channel"]
    assert str(events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert events["amount"].dtype == "float64"
    assert isinstance(events["channel"].dtype, pd.CategoricalDtype)
    assert isinstance(events.index, pd.RangeIndex)
    assert events["event_type"].tolist() == [r["event_type"] for r in ROWS]
    # A blank channel is missing, not a channel called "".
    assert events["channel"].isna().tolist() == [False, False, True, False]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_events(tmp_path / "nowhere.csv")


def test_mapping_renames_columns_and_translates_events(tmp_path):
    rows = [
        {"uid": "1", "when": "2024-01-01T00:00:00Z", "name": "view_item", "customer_id": "9"},
        {"uid": "2", "when": "2024-01-01T00:00:00Z", "name": "pdp_view", "customer_id": "9"},
        {"uid": "3", "when": "2024-01-01T00:00:00Z", "name": "login", "customer_id": "9"},
    ]
    mapping = EventMapping(
        columns={"customer_id": "uid", "timestamp": "when", "event_type": "name"},
        event_types={"view_item": "product_view", "pdp_view": "product_view"},
    )
    events, _ = load_events(write_csv(tmp_path / "events.csv", rows), mapping=mapping)
    # The mapped column wins over a same-named extra column; unmapped names pass through;
    # two source names for one canonical type merge into one category.
    assert events["customer_id"].tolist() == ["1", "2", "3"]
    assert events["event_type"].tolist() == ["product_view", "product_view", "login"]
    assert list(events["event_type"].cat.categories) == ["login", "product_view"]
    assert list(events.columns) == ["customer_id", "timestamp", "event_type"]


def test_optional_column_named_by_mapping_but_absent_is_reported(tmp_path):
    # the log has purchases: losing their amounts must be allowed explicitly (else refused,
    # tests/features/test_presets.py)
    mapping = EventMapping(columns={"amount": "revenue"}, allow_missing_amounts=True)
    events, summary = load_events(write_csv(tmp_path / "events.csv", ROWS), mapping=mapping)
    assert "amount" not in events.columns
    assert summary.absent_columns == {"amount": "revenue"}
    assert "no column 'revenue' for amount" in str(summary)


def test_unparseable_timestamps_are_quarantined_with_row_numbers(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["timestamp"] = "yesterday"
    rows[3]["timestamp"] = ""
    path = write_csv(tmp_path / "events.csv", rows)
    events, summary = load_events(path)
    assert summary.quarantined == {"unparseable_timestamp": 2}
    assert summary.quarantine_path == tmp_path / "events.quarantine.csv"
    assert summary.quarantine_path is not None
    quarantine = pd.read_csv(summary.quarantine_path, dtype=str, keep_default_na=False)
    assert quarantine["row_number"].tolist() == ["2", "4"]
    assert quarantine["reason"].tolist() == ["unparseable_timestamp"] * 2
    # The source columns follow, as the source wrote them (zeros and extras included).
    assert list(quarantine.columns[2:]) == list(ROWS[0])
    assert quarantine["customer_id"].tolist() == ["0042", "c-3"]
    assert quarantine["timestamp"].tolist() == ["yesterday", ""]
    assert events["customer_id"].tolist() == ["007", "007"]


def test_no_quarantine_file_when_every_row_is_good(tmp_path):
    _, summary = load_events(write_csv(tmp_path / "events.csv", ROWS))
    assert summary.quarantine_path is None
    assert not (tmp_path / "events.quarantine.csv").exists()


def test_quarantine_path_can_be_chosen(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["customer_id"] = ""
    target = tmp_path / "bad" / "rows.csv"
    target.parent.mkdir()
    _, summary = load_events(write_csv(tmp_path / "events.csv", rows), quarantine_path=target)
    assert summary.quarantine_path == target
    assert pd.read_csv(target)["reason"].tolist() == ["missing_customer_id"]


def test_unknown_events_strict_quarantines_and_lenient_keeps(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["event_type"] = "teleport"
    rows[3]["event_type"] = "teleport"
    path = write_csv(tmp_path / "events.csv", rows)

    strict, strict_summary = load_events(path)
    assert strict_summary.quarantined == {"unknown_event_type": 2}
    assert "teleport" not in strict["event_type"].cat.categories

    lenient, lenient_summary = load_events(path, unknown_events="lenient")
    assert lenient_summary.quarantined == {}
    assert lenient_summary.unknown_event_types == {"teleport": 2}
    assert lenient["event_type"].tolist() == ["page_view", "teleport", "refund", "teleport"]
