"""The ga4 and segment presets on exports as their vendors write them, and silent loss.

The fixtures reproduce the public schemas field for field: GA4's BigQuery export
(``events_YYYYMMDD``: repeated ``event_params`` key/value records, the ``ecommerce``
record, ``items``, ``device``, ``geo``, ``traffic_source``, ...) as Parquet with its
nested types and as the JSON Lines BigQuery writes (INT64 as strings, NULL fields
left out); Segment's track, page and identify calls with their common fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import load_mapping
from customer_lifecycle.features.streaming import stream_chunks

from tests.features.event_files import one_line

# -- GA4 BigQuery export ----------------------------------------------------------------

_VALUE = pa.struct(
    [
        ("string_value", pa.string()),
        ("int_value", pa.int64()),
        ("float_value", pa.float64()),
        ("double_value", pa.float64()),
    ]
)
_PARAMS = pa.list_(pa.struct([("key", pa.string()), ("value", _VALUE)]))
_USER_VALUE = pa.struct([*_VALUE, ("set_timestamp_micros", pa.int64())])
GA4_SCHEMA = pa.schema(
    [
        ("event_date", pa.string()),
        ("event_timestamp", pa.int64()),
        ("event_name", pa.string()),
        ("event_params", _PARAMS),
        ("event_previous_timestamp", pa.int64()),
        ("event_value_in_usd", pa.float64()),
        ("event_bundle_sequence_id", pa.int64()),
        ("event_server_timestamp_offset", pa.int64()),
        ("user_id", pa.string()),
        ("user_pseudo_id", pa.string()),
        (
            "privacy_info",
            pa.struct(
                [
                    ("analytics_storage", pa.string()),
                    ("ads_storage", pa.string()),
                    ("uses_transient_token", pa.string()),
                ]
            ),
        ),
        ("user_properties", pa.list_(pa.struct([("key", pa.string()), ("value", _USER_VALUE)]))),
        ("user_first_touch_timestamp", pa.int64()),
        ("user_ltv", pa.struct([("revenue", pa.float64()), ("currency", pa.string())])),
        (
            "device",
            pa.struct(
                [
                    ("category", pa.string()),
                    ("mobile_brand_name", pa.string()),
                    ("mobile_model_name", pa.string()),
                    ("mobile_marketing_name", pa.string()),
                    ("mobile_os_hardware_model", pa.string()),
                    ("operating_system", pa.string()),
                    ("operating_system_version", pa.string()),
                    ("vendor_id", pa.string()),
                    ("advertising_id", pa.string()),
                    ("language", pa.string()),
                    ("is_limited_ad_tracking", pa.string()),
                    ("time_zone_offset_seconds", pa.int64()),
                    ("browser", pa.string()),
                    ("browser_version", pa.string()),
                    (
                        "web_info",
                        pa.struct(
                            [
                                ("browser", pa.string()),
                                ("browser_version", pa.string()),
                                ("hostname", pa.string()),
                            ]
                        ),
                    ),
                ]
            ),
        ),
        (
            "geo",
            pa.struct(
                [
                    (k, pa.string())
                    for k in ("city", "country", "continent", "region", "sub_continent", "metro")
                ]
            ),
        ),
        (
            "app_info",
            pa.struct(
                [
                    (k, pa.string())
                    for k in ("id", "version", "install_store", "firebase_app_id", "install_source")
                ]
            ),
        ),
        ("traffic_source", pa.struct([(k, pa.string()) for k in ("name", "medium", "source")])),
        ("stream_id", pa.string()),
        ("platform", pa.string()),
        ("event_dimensions", pa.struct([("hostname", pa.string())])),
        (
            "ecommerce",
            pa.struct(
                [
                    ("total_item_quantity", pa.int64()),
                    ("purchase_revenue_in_usd", pa.float64()),
                    ("purchase_revenue", pa.float64()),
                    ("refund_value_in_usd", pa.float64()),
                    ("refund_value", pa.float64()),
                    ("shipping_value_in_usd", pa.float64()),
                    ("shipping_value", pa.float64()),
                    ("tax_value_in_usd", pa.float64()),
                    ("tax_value", pa.float64()),
                    ("unique_items", pa.int64()),
                    ("transaction_id", pa.string()),
                ]
            ),
        ),
        (
            "items",
            pa.list_(
                pa.struct(
                    [
                        ("item_id", pa.string()),
                        ("item_name", pa.string()),
                        ("item_brand", pa.string()),
                        ("item_variant", pa.string()),
                        ("item_category", pa.string()),
                        ("item_category2", pa.string()),
                        ("item_category3", pa.string()),
                        ("item_category4", pa.string()),
                        ("item_category5", pa.string()),
                        ("price_in_usd", pa.float64()),
                        ("price", pa.float64()),
                        ("quantity", pa.int64()),
                        ("item_revenue_in_usd", pa.float64()),
                        ("item_revenue", pa.float64()),
                        ("item_refund_in_usd", pa.float64()),
                        ("item_refund", pa.float64()),
                        ("coupon", pa.string()),
                        ("affiliation", pa.string()),
                        ("location_id", pa.string()),
                        ("item_list_id", pa.string()),
                        ("item_list_name", pa.string()),
                        ("item_list_index", pa.string()),
                        ("promotion_id", pa.string()),
                        ("promotion_name", pa.string()),
                        ("creative_name", pa.string()),
                        ("creative_slot", pa.string()),
                        ("item_params", _PARAMS),
                    ]
                )
            ),
        ),
        (
            "collected_traffic_source",
            pa.struct(
                [
                    (k, pa.string())
                    for k in (
                        "manual_campaign_id",
                        "manual_campaign_name",
                        "manual_source",
                        "manual_medium",
                        "manual_term",
                        "manual_content",
                        "gclid",
                        "dclid",
                        "srsltid",
                    )
                ]
            ),
        ),
        ("is_active_user", pa.bool_()),
        ("batch_event_index", pa.int64()),
        ("batch_page_id", pa.int64()),
        ("batch_ordering_id", pa.int64()),
    ]
)

_T0 = 1_704_096_000_000_000  # 2024-01-01T08:00:00Z in microseconds


def _param(key: str, value: Any) -> dict[str, Any]:
    slot = {
        str: "string_value",
        int: "int_value",
        float: "double_value",
    }[type(value)]
    return {"key": key, "value": {slot: value}}


def _ga4_event(
    n: int,
    name: str,
    pseudo: str,
    *,
    user: str | None = None,
    revenue: float | None = None,
    refund: float | None = None,
    value: float | None = None,
    medium: str | None = "organic",
) -> dict[str, Any]:
    params = [_param("ga_session_id", 1_704_090_000 + n), _param("page_location", "https://x/")]
    if value is not None:
        params.append(_param("value", value))
        params.append(_param("currency", "EUR"))
    ecommerce = None
    items = []
    if revenue is not None or refund is not None:
        ecommerce = {
            "total_item_quantity": 1,
            "purchase_revenue": revenue,
            "purchase_revenue_in_usd": revenue,
            "refund_value": refund,
            "refund_value_in_usd": refund,
            "unique_items": 1,
            "transaction_id": f"T{n}",
        }
        items = [{"item_id": "SKU1", "item_name": "Mug", "price": 12.5, "quantity": 1}]
    return {
        "event_date": "20240101",
        "event_timestamp": _T0 + n * 60_000_000,
        "event_name": name,
        "event_params": params,
        "event_bundle_sequence_id": n,
        "user_id": user,
        "user_pseudo_id": pseudo,
        "privacy_info": {"analytics_storage": "Yes", "ads_storage": "Yes"},
        "user_properties": [],
        "user_first_touch_timestamp": _T0,
        "user_ltv": {"revenue": 0.0, "currency": "EUR"},
        "device": {
            "category": "desktop",
            "operating_system": "Windows",
            "language": "en-us",
            "web_info": {"browser": "Chrome", "browser_version": "120.0", "hostname": "x"},
        },
        "geo": {"city": "Lyon", "country": "France", "continent": "Europe"},
        "app_info": None,
        "traffic_source": {"name": "(organic)", "medium": medium, "source": "google"},
        "stream_id": "1234567890",
        "platform": "WEB",
        "event_dimensions": None,
        "ecommerce": ecommerce,
        "items": items,
        "collected_traffic_source": None,
        "is_active_user": True,
        "batch_event_index": n,
    }


GA4_EVENTS = [
    # An anonymous visitor browses, adds to cart and leaves.
    _ga4_event(1, "page_view", "111.1"),
    _ga4_event(2, "view_item", "111.1", value=12.5),
    _ga4_event(3, "add_to_cart", "111.1", value=12.5),
    # A visitor signs in (user_id from then on), buys twice and has one refunded.
    _ga4_event(4, "login", "222.2", user="U-9"),
    _ga4_event(5, "begin_checkout", "222.2", user="U-9", value=40.0),
    _ga4_event(6, "purchase", "222.2", user="U-9", revenue=40.0, value=40.0),
    _ga4_event(7, "purchase", "333.3", user="U-9", revenue=15.5, medium="cpc"),
    _ga4_event(8, "refund", "222.2", user="U-9", refund=15.5),
    _ga4_event(9, "sign_up", "444.4", user="U-7"),
    # Automatically collected: no canonical type (quarantined under the strict policy).
    _ga4_event(10, "session_start", "111.1"),
]


def _drop_nulls(value: Any) -> Any:
    """BigQuery's JSON export: NULL fields left out, INT64 written as strings."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    return value


def write_ga4(tmp_path: Path, fmt: str, events: list[dict[str, Any]] = GA4_EVENTS) -> Path:
    if fmt == "parquet":
        path = tmp_path / "events_20240101.parquet"
        pq.write_table(pa.Table.from_pylist(events, schema=GA4_SCHEMA), path)
    else:
        path = tmp_path / "events_20240101.jsonl"
        path.write_text("".join(json.dumps(_drop_nulls(e)) + "\n" for e in events))
    return path


def _streamed(path: Path, mapping: Any, tmp_path: Path) -> pd.DataFrame:
    rows, _ = stream_chunks(
        path,
        out=tmp_path / f"{path.stem}.{path.suffix[1:]}.streamed.parquet",
        apply=lambda events: events,
        empty=pd.DataFrame(),
        mapping=mapping,
        unknown_events="strict",
        progress=None,
        chunk_customers=1000,
        quarantine_path=tmp_path / f"{path.name}.q.csv",
        partitions=None,
        keep=True,
    )
    assert rows is not None
    return _ordered(rows)


def _ordered(events: pd.DataFrame) -> pd.DataFrame:
    out = events.astype({"customer_id": str, "event_type": str, "channel": str})
    return out.sort_values(["timestamp", "customer_id"]).reset_index(drop=True)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])  # nested Parquet; BigQuery's JSON Lines
def test_ga4_export_reaches_the_contract(tmp_path, fmt):
    path = write_ga4(tmp_path, fmt)
    events, summary = load_events(path, mapping=load_mapping("ga4"))
    assert summary.quarantined == {"unknown_event_type": 1}  # session_start
    assert events["event_type"].tolist() == [
        "page_view", "product_view", "add_to_cart", "login", "checkout_start",
        "purchase", "purchase", "refund", "onboarding_step",
    ]  # fmt: skip
    # user_id where present (one customer over two devices), user_pseudo_id otherwise
    assert events["customer_id"].astype(str).tolist() == ["111.1"] * 3 + ["U-9"] * 5 + ["U-7"]
    amounts = events["amount"].to_numpy()
    # ecommerce.purchase_revenue, ecommerce.refund_value, then the `value` parameter
    assert amounts[5:8].tolist() == [40.0, 15.5, 15.5]
    assert amounts[[1, 2, 4]].tolist() == [12.5, 12.5, 40.0]
    assert np.isnan(amounts[[0, 3, 8]]).all()
    assert events["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T08:01:00", tz="UTC")
    assert events["channel"].astype(str).tolist()[6] == "cpc"
    features = build_features(events, as_of=pd.Timestamp("2024-01-02", tz="UTC"))
    revenue = [c for c in features.columns if c.startswith("amount_purchase_sum_")]
    assert revenue and (features.loc["U-9", revenue] == 55.5).all()


def test_ga4_formats_and_streaming_give_the_same_rows(tmp_path):
    mapping = load_mapping("ga4")
    whole = {
        f: _ordered(load_events(write_ga4(tmp_path, f), mapping=mapping)[0])
        for f in ("parquet", "jsonl")
    }
    pd.testing.assert_frame_equal(whole["parquet"], whole["jsonl"])
    for fmt in ("parquet", "jsonl"):
        streamed = _streamed(write_ga4(tmp_path, fmt), mapping, tmp_path)
        pd.testing.assert_frame_equal(
            streamed[whole[fmt].columns], whole[fmt], check_categorical=False
        )


def test_ga4_user_id_precedence_is_configurable(tmp_path):
    path = write_ga4(tmp_path, "parquet")
    own = tmp_path / "devices.yaml"
    own.write_text("extends: ga4\ncolumns: {customer_id: user_pseudo_id}\n")
    events, _ = load_events(path, mapping=load_mapping(own))
    assert set(events["customer_id"].astype(str)) == {"111.1", "222.2", "333.3", "444.4"}


def test_missing_nested_source_is_named(tmp_path):
    path = write_ga4(tmp_path, "parquet")
    own = tmp_path / "m.yaml"
    own.write_text("extends: ga4\ncolumns: {customer_id: device.user_key}\n")
    with pytest.raises(ValueError) as exc:
        load_events(path, mapping=load_mapping(own))
    assert "'device.user_key'" in one_line(exc) and "customer_id" in one_line(exc)
    # a path through a value that is not a record
    own.write_text("extends: ga4\ncolumns: {customer_id: user_id.name}\n")
    with pytest.raises(ValueError) as exc:
        load_events(path, mapping=load_mapping(own))
    assert "'user_id.name'" in one_line(exc) and "record" in one_line(exc)


# -- silent loss ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        # a source the data lacks
        ("ecommerce.gross_revenue", "has no such field"),
        # a source that is there but null on every purchase
        ("ecommerce.tax_value", "is null on all 2 purchases"),
    ],
)
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_lost_amounts_stop_the_load_unless_allowed(tmp_path, fmt, amount, reason):
    path = write_ga4(tmp_path, fmt)
    own = tmp_path / "m.yaml"
    own.write_text(f"extends: ga4\ncolumns: {{amount: {amount}}}\n")
    mapping = load_mapping(own)
    if fmt == "jsonl" and amount == "ecommerce.tax_value":
        reason = "has no such field"  # BigQuery's JSON leaves NULL fields out: never seen
    with pytest.raises(ValueError) as exc:
        load_events(path, mapping=mapping)
    assert reason in one_line(exc) and "--allow-missing-amounts" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        _streamed(path, mapping, tmp_path)
    assert reason in one_line(exc)
    assert mapping is not None
    allowed = mapping.model_copy(update={"allow_missing_amounts": True})
    events, _ = load_events(path, mapping=allowed)
    assert len(_streamed(path, allowed, tmp_path)) == len(events) == 9
    # a log without purchases loses nothing: no refusal
    no_sales = tmp_path / "no_sales"
    no_sales.mkdir()
    path = write_ga4(no_sales, fmt, [e for e in GA4_EVENTS if e["event_name"] != "purchase"])
    assert len(load_events(path, mapping=mapping)[0]) == 7


# -- Segment ----------------------------------------------------------------------------


def _segment_call(n: int, kind: str, event: str | None = None, **fields: Any) -> dict[str, Any]:
    call: dict[str, Any] = {
        "anonymousId": f"anon-{fields.pop('anon', 1)}",
        "channel": "browser",
        "context": {
            "active": True,
            "ip": "8.8.8.8",
            "library": {"name": "analytics.js", "version": "2.11.1"},
            "locale": "en-US",
            "page": {"path": "/", "referrer": "", "title": "Shop", "url": "https://shop/"},
            "userAgent": "Mozilla/5.0",
            "campaign": {"name": "spring", "source": "newsletter", "medium": "email"},
        },
        "integrations": {"All": True},
        "messageId": f"ajs-{n}",
        "receivedAt": f"2024-01-01T08:{n:02d}:01.000Z",
        "sentAt": f"2024-01-01T08:{n:02d}:00.500Z",
        "timestamp": f"2024-01-01T08:{n:02d}:00.000Z",
        "type": kind,
        "userId": fields.pop("user", None),
        "version": 2,
    }
    if event is not None:
        call["event"] = event
    if kind == "page":
        call["name"] = "Home"
    if kind == "identify":
        call["traits"] = {"email": "a@b.c"}
    else:
        call["properties"] = fields.pop("properties", {})
    return call


SEGMENT_CALLS = [
    _segment_call(1, "page"),
    _segment_call(2, "track", "Product Viewed", properties={"product_id": "p1", "price": 9.5}),
    _segment_call(3, "identify", user="u-1"),
    _segment_call(4, "track", "Product Added", user="u-1", properties={"product_id": "p1"}),
    _segment_call(5, "track", "Checkout Started", user="u-1", properties={"value": 30.0}),
    _segment_call(
        6,
        "track",
        "Order Completed",
        user="u-1",
        properties={"order_id": "o1", "total": 30.0, "revenue": 25.0, "currency": "USD"},
    ),  # fmt: skip
    _segment_call(
        7, "track", "Order Refunded", user="u-1", properties={"order_id": "o1", "total": 30.0}
    ),
    _segment_call(
        8, "track", "Order Completed", anon=2, properties={"order_id": "o2", "revenue": 12.0}
    ),
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])  # as delivered; a nested Parquet copy
def test_segment_export_reaches_the_contract(tmp_path, fmt):
    if fmt == "jsonl":
        path = tmp_path / "segment.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in SEGMENT_CALLS))
    else:
        path = tmp_path / "segment.parquet"
        # every field of any call (from_pylist would take the first call's fields only)
        pq.write_table(pa.Table.from_struct_array(pa.array(SEGMENT_CALLS)), path)
    mapping = load_mapping("segment")
    events, summary = load_events(path, mapping=mapping)
    # the identify call describes a user, it is not an action
    assert summary.quarantined == {"unknown_event_type": 1}
    assert events["event_type"].tolist() == [
        "page_view", "product_view", "add_to_cart", "checkout_start", "purchase", "refund",
        "purchase",
    ]  # fmt: skip
    assert events["customer_id"].astype(str).tolist() == ["anon-1"] * 2 + ["u-1"] * 4 + ["anon-2"]
    assert events["amount"].tolist()[3:] == [30.0, 30.0, 30.0, 12.0]
    assert set(events["channel"].astype(str)) == {"email"}
    streamed = _streamed(path, mapping, tmp_path)
    pd.testing.assert_frame_equal(
        streamed[events.columns], _ordered(events), check_categorical=False
    )


def test_cli_refuses_lost_amounts_unless_allowed(tmp_path):
    from typer.testing import CliRunner

    from customer_lifecycle.cli import app

    path = write_ga4(tmp_path, "parquet")
    own = tmp_path / "m.yaml"
    own.write_text("extends: ga4\ncolumns: {amount: ecommerce.gross_revenue}\n")
    args = ["features", "--events", str(path), "--mapping", str(own), "--as-of", "2024-01-02"]
    for extra in ([], ["--chunk-customers", "10"]):  # whole log; streamed
        out = tmp_path / f"f{len(extra)}.parquet"
        refused = CliRunner().invoke(app, [*args, *extra, "--out", str(out)])
        assert refused.exit_code == 2 and "--allow-missing-amounts" in refused.output
        assert not out.exists()
        allowed = CliRunner().invoke(
            app, [*args, *extra, "--out", str(out), "--allow-missing-amounts"]
        )
        assert allowed.exit_code == 0, allowed.output
        assert len(pd.read_parquet(out)) == 3  # 111.1, U-9, U-7
