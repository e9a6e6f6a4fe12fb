"""Tests for event mappings (features.mapping): mapping files, their errors, the presets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import EventMapping, FieldSource, load_mapping

from tests.features.event_files import (
    one_line,
    write_csv,
)


def write_mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    return path


def test_mapping_file_loads(tmp_path):
    path = write_mapping(
        tmp_path,
        "columns: {customer_id: uid, timestamp: ts}\n"
        "event_types: {view_item: product_view}\n"
        "timestamp_unit: ms\n",
    )
    assert load_mapping(path) == EventMapping(
        columns={"customer_id": "uid", "timestamp": "ts"},
        event_types={"view_item": "product_view"},
        timestamp_unit="ms",
    )
    assert load_mapping(None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A misspelt top-level key: named, with the closest valid key.
        ("colums: {customer_id: uid}\n", "unknown key 'colums'; did you mean 'columns'?"),
        # A column that is not in the contract, on the left of `columns`.
        ("columns: {customer: uid}\n", "'customer' is not a contract column; did you mean"),
        # An event mapped onto a name outside the canonical list.
        (
            "event_types: {view_item: product_veiw}\n",
            "'product_veiw', which is not a canonical event type; did you mean 'product_view'?",
        ),
        # A YAML list instead of a mapping.
        ("- columns\n- event_types\n", "must be a YAML mapping"),
        # An empty file.
        ("", "must be a YAML mapping"),
        # Broken YAML syntax: the line is named.
        ("columns: {customer_id: uid\nevent_types: [\n", "is not valid YAML at line"),
        # `columns` must itself be a mapping.
        ("columns: [customer_id]\n", "'columns' must be a mapping"),
        # A time unit that does not exist.
        ("timestamp_unit: sec\n", "timestamp_unit 'sec' is not one of s, ms, us, ns"),
        # A column mapped to nothing.
        ("columns: {customer_id: }\n", "columns.customer_id must be a name"),
    ],
)
def test_mapping_typos_are_refused_in_one_line(tmp_path, text, expected):
    path = write_mapping(tmp_path, text)
    with pytest.raises(ValueError) as exc:
        load_mapping(path)
    message = one_line(exc)
    assert expected in message
    assert str(path) in message


def test_missing_mapping_file_is_refused(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_mapping(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(exc) and "ga4" in str(exc.value)


@pytest.mark.parametrize("name", ["ga4", "segment", "GA4"])  # presets, by name in any case
def test_presets_map_only_onto_canonical_types(name):
    mapping = load_mapping(name)
    assert mapping is not None and mapping.event_types
    assert set(mapping.event_types.values()) <= set(CANONICAL_EVENT_TYPES)


def test_ga4_preset_translates_a_tiny_log(tmp_path):
    rows = [
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096000000000",
         "event_name": "view_item", "value": "", "platform": "WEB"},
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096060000000",
         "event_name": "add_to_wishlist", "value": "", "platform": "WEB"},
        {"user_pseudo_id": "0123.456", "event_timestamp": "1704096120000000",
         "event_name": "purchase", "value": "42.5", "platform": "WEB"},
        {"user_pseudo_id": "999.1", "event_timestamp": "1704096180000000",
         "event_name": "refund", "value": "-42.5", "platform": "WEB"},
        {"user_pseudo_id": "999.1", "event_timestamp": "1704096240000000",
         "event_name": "session_start", "value": "", "platform": "WEB"},
    ]  # fmt: skip
    path = write_csv(tmp_path / "ga4.csv", rows)
    events, summary = load_events(path, mapping=load_mapping("ga4"))
    assert events["event_type"].tolist() == ["product_view", "wishlist_add", "purchase", "refund"]
    assert events["customer_id"].tolist() == ["0123.456"] * 3 + ["999.1"]
    assert events["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["amount"].tolist()[2:] == [42.5, 42.5]
    # session_start is automatically collected, not a recommended event: strict refuses it.
    assert summary.quarantined == {"unknown_event_type": 1}


def test_segment_preset_translates_a_tiny_log(tmp_path):
    records = [
        {"userId": "u1", "timestamp": "2024-01-01T08:00:00.000Z", "event": "Product Viewed",
         "properties": {"product_id": "p1"}},
        {"userId": "u1", "timestamp": "2024-01-01T09:00:00+01:00", "event": "Order Completed",
         "properties": {"total": 30.0, "revenue": 25.0}},
        {"userId": "u1", "timestamp": "2024-01-02T08:00:00.000Z", "event": "Coupon Applied",
         "properties": {"coupon_id": "c"}},
        {"userId": None, "anonymousId": "a1", "timestamp": "2024-01-02T08:00:00.000Z",
         "event": "Product Viewed", "properties": {}},
    ]  # fmt: skip
    path = tmp_path / "segment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Known users only (the preset, told to read userId alone).
    known_only = write_mapping(tmp_path, "extends: segment\ncolumns: {customer_id: userId}\n")
    events, summary = load_events(path, mapping=load_mapping(known_only))
    assert events["event_type"].tolist() == ["product_view", "purchase", "promo_redeemed"]
    assert events["timestamp"].iloc[1] == pd.Timestamp("2024-01-01T08:00:00", tz="UTC")
    assert events["amount"].iloc[1] == 30.0
    # An anonymous visitor has no userId: quarantined, not dropped.
    assert summary.quarantined == {"missing_customer_id": 1}
    # The preset itself falls back to anonymousId: the visitor is a customer of their own.
    events, summary = load_events(path, mapping=load_mapping("segment"))
    assert events["customer_id"].tolist() == ["u1", "u1", "u1", "a1"]
    assert summary.quarantined == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # A column.
        ("user_id", {"column": "user_id", "path": (), "key": None}),
        # A field of a nested record, two levels down.
        ("context.campaign.medium", {"column": "context", "path": ("campaign", "medium")}),
        # A key of a repeated key/value record, short form.
        ("event_params[value]", {"column": "event_params", "key": "value", "key_field": "key"}),
        # The long form: key field, key and the value's path in the entry.
        (
            "a.params[name=revenue].value.double_value",
            {"column": "a", "path": ("params",), "key": "revenue", "key_field": "name",
             "value_path": ("value", "double_value")},
        ),
    ],
)  # fmt: skip
def test_source_strings_parse(source, expected):
    parsed = FieldSource.parse(source)
    assert {k: getattr(parsed, k) for k in expected} == expected
    assert parsed.text == source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # An unknown key in a first-of source, with the closest one.
        ("columns: {customer_id: {frist_of: [a, b]}}\n", "did you mean 'first_of'?"),
        # first_of must list sources.
        ("columns: {customer_id: {first_of: a}}\n", "first_of must be a list"),
        # A malformed key lookup.
        ("columns: {amount: 'event_params[value'}\n", "is not one of the forms"),
        # An empty field name in a path.
        ("columns: {amount: ecommerce..revenue}\n", "has an empty field name"),
        # extends names a preset that does not exist.
        ("extends: ga5\n", "'ga5' is not a preset; did you mean 'ga4'?"),
    ],
)
def test_source_typos_are_refused_in_one_line(tmp_path, text, expected):
    path = write_mapping(tmp_path, text)
    with pytest.raises(ValueError) as exc:
        load_mapping(path)
    assert expected in one_line(exc) and str(path) in one_line(exc)


def test_extends_overrides_a_preset_column_by_column(tmp_path):
    path = write_mapping(
        tmp_path, "extends: ga4\ncolumns: {customer_id: user_pseudo_id}\nevent_types: {x: login}\n"
    )
    mapping = load_mapping(path)
    ga4 = load_mapping("ga4")
    assert mapping is not None and ga4 is not None
    assert mapping.source_column("customer_id") == "user_pseudo_id"
    assert mapping.columns["amount"] == ga4.columns["amount"]
    assert mapping.event_types == {**ga4.event_types, "x": "login"}
    assert mapping.timestamp_unit == "us"
