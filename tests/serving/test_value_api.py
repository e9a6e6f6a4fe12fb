"""Customer value in the HTTP API: ``value`` of every score and of ``GET /v1/model``.

The session's models (tests/serving/conftest.py) are trained with a value model, so a
score's value must be what the bundle's own value model says for the same features:
the batch path's value columns for ``POST /v1/scores`` (features built from the same
events, dates counted from the request's as_of) and :meth:`ModelBundle.value_outputs`
for ``POST /v1/scores/features`` (no as_of, so no date). A customer who never bought
gets the never-buyer fill, and a model without a value model answers null.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.btyd import ValueModel
from customer_lifecycle.scoring.bundle import VALUE_COLUMNS, ModelBundle
from customer_lifecycle.serving.app import create_app
from fastapi.testclient import TestClient

from tests.serving.support import (
    AUTH,
    Trained,
    busy_customers,
    customer_payload,
    live_server,
    settings,
)

_VALUE_FIELDS = {*VALUE_COLUMNS, "horizon_days"}


@pytest.fixture(scope="module")
def bundle(trained: Trained) -> ModelBundle:
    return ModelBundle.load(trained.v1_dir)


@pytest.fixture(scope="module")
def value(bundle: ModelBundle) -> ValueModel:
    assert bundle.value is not None, "the serving fixture's model has no value model"
    return bundle.value


@pytest.fixture(scope="module")
def ids(trained: Trained) -> list[str]:
    return busy_customers(trained.events, trained.as_of, 20)


@pytest.fixture(scope="module")
def subset(trained: Trained, ids: list[str]) -> pd.DataFrame:
    events = trained.events
    return events[events["customer_id"].astype(str).isin(ids)]


def _as_of_text(trained: Trained) -> str:
    return f"{trained.as_of}T00:00:00Z"


def _expected(row: dict[str, Any], horizon: int) -> dict[str, Any]:
    """A row of value columns (floats NaN when missing, date text or None) as JSON."""
    spend = row["expected_spend"]
    purchases = row["expected_purchases"]
    day = row["next_purchase_date"]
    return {
        "expected_purchases": None if purchases != purchases else float(purchases),
        "expected_spend": None if spend != spend else float(spend),
        # the batch frame holds a missing date as NaN, value_outputs as None
        "next_purchase_date": None if pd.isna(day) else str(day),
        "value_tier": str(row["value_tier"]),
        "horizon_days": horizon,
    }


def _assert_value_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == _VALUE_FIELDS
    for key in ("expected_purchases", "expected_spend"):
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert got["next_purchase_date"] == want["next_purchase_date"]
    assert got["value_tier"] == want["value_tier"]
    assert got["horizon_days"] == want["horizon_days"]


def test_scores_from_events_carry_the_value_of_the_batch_path(
    client: TestClient,
    trained: Trained,
    bundle: ModelBundle,
    value: ValueModel,
    ids: list[str],
    subset: pd.DataFrame,
) -> None:
    body = {
        "as_of": _as_of_text(trained),
        "customers": [customer_payload(trained.events, c) for c in ids],
    }
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["customer_id"] for s in scores] == ids
    batch = bundle.predict_events(subset, as_of=trained.as_of).set_index("customer_id")
    as_of_day = date.fromisoformat(trained.as_of)
    for score in scores:
        row = batch.loc[score["customer_id"], list(VALUE_COLUMNS)].to_dict()
        _assert_value_equal(score["value"], _expected(row, value.horizon_days))
        day = score["value"]["next_purchase_date"]
        if day is not None:
            assert date.fromisoformat(day) >= as_of_day
    # busy customers: a real spread of values and at least one dated next purchase
    purchases = [s["value"]["expected_purchases"] for s in scores]
    assert max(purchases) - min(purchases) > 0.1
    assert any(s["value"]["next_purchase_date"] for s in scores)
    assert {s["value"]["value_tier"] for s in scores} <= {*value.tiers.labels, "unknown"}


def test_scores_from_features_carry_value_outputs_without_a_date(
    client: TestClient,
    trained: Trained,
    bundle: ModelBundle,
    value: ValueModel,
    ids: list[str],
    subset: pd.DataFrame,
) -> None:
    feats = bundle.build_features(subset, as_of=trained.as_of)
    feats = feats.loc[[c for c in ids if c in feats.index]]
    X = feats[bundle.feature_names].to_numpy(dtype=np.float64)
    customers = [
        {
            "customer_id": str(cid),
            "features": {
                k: None if v != v else float(v)
                for k, v in zip(bundle.feature_names, x, strict=True)
            },
        }
        for cid, x in zip(feats.index, X.tolist(), strict=True)
    ]
    r = client.post("/v1/scores/features", json={"customers": customers}, headers=AUTH)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    out = bundle.value_outputs(X)
    assert out is not None
    for i, score in enumerate(scores):
        row = {k: out[k][i] for k in VALUE_COLUMNS}
        assert row["next_purchase_date"] is None  # no as_of, no date
        _assert_value_equal(score["value"], _expected(row, value.horizon_days))
    # the same customers scored from events at the trained as_of do get dates
    dated = bundle.value_outputs(X, pd.Timestamp(trained.as_of, tz="UTC"))
    assert dated is not None and any(d is not None for d in dated["next_purchase_date"])


def test_a_customer_who_never_bought_gets_the_never_buyer_value(
    client: TestClient, trained: Trained, value: ValueModel
) -> None:
    as_of = _as_of_text(trained)
    browsing = [
        {"timestamp": "2024-11-02T10:00:00Z", "event_type": "page_view"},
        {"timestamp": "2024-12-01T10:00:00Z", "event_type": "content_view"},
    ]
    bought_later = [{"timestamp": as_of, "event_type": "purchase", "amount": 40.0}]
    body = {
        "as_of": as_of,
        "customers": [
            {"customer_id": "browser", "events": browsing},
            {"customer_id": "empty", "events": []},
            # a purchase at as_of is not before it: still a never-buyer
            {"customer_id": "later", "events": bought_later},
        ],
    }
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    fill = value.predict([0.0], [np.nan], [np.nan], [np.nan])
    spend = value.never_buyer_spend
    for score in r.json()["scores"]:
        got = score["value"]
        assert got["expected_purchases"] == pytest.approx(value.never_buyer_purchases)
        if math.isnan(spend):
            assert got["expected_spend"] is None
        else:
            assert got["expected_spend"] == pytest.approx(spend)
        assert got["next_purchase_date"] is None
        assert got["value_tier"] == str(fill["value_tier"][0])
        assert got["horizon_days"] == value.horizon_days


def test_model_info_describes_the_value_model(
    client: TestClient, value: ValueModel, bundle: ModelBundle
) -> None:
    info = client.get("/v1/model", headers=AUTH).json()["value"]
    assert info == {
        "horizon_days": value.horizon_days,
        "tiers": list(value.tiers.labels),
        "tier_shares": pytest.approx(list(value.tiers.shares)),
        "tier_thresholds": pytest.approx(list(value.tiers.thresholds)),
        "tier_by": value.tier_by,
        "predicts_spend": value.has_spend,
        "heads": list(value.heads),
    }
    assert info["tiers"][-1] == "rest"
    # the churn horizon is a different number, reported on its own
    assert client.get("/v1/model", headers=AUTH).json()["horizon_days"] == bundle.horizon_days


@pytest.fixture(scope="module")
def no_value_dir(bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # What train(TrainConfig(value=False)) produces: the same bundle, no value model.
    plain = dataclasses.replace(
        bundle, value=None, value_purchases_booster=None, value_spend_booster=None
    )
    return plain.save(tmp_path_factory.mktemp("no-value") / "bundle")


@pytest.fixture(scope="module")
def no_value_client(no_value_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(no_value_dir))) as c:
        yield c


def test_a_model_without_value_answers_null(
    no_value_client: TestClient,
    no_value_dir: Path,
    trained: Trained,
    ids: list[str],
    bundle: ModelBundle,
) -> None:
    assert ModelBundle.load(no_value_dir).value is None
    body = {
        "as_of": _as_of_text(trained),
        "customers": [customer_payload(trained.events, c) for c in ids[:3]],
    }
    r = no_value_client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [s["value"] for s in r.json()["scores"]] == [None] * 3
    feats = {n: 0.0 for n in bundle.feature_names}
    r = no_value_client.post(
        "/v1/scores/features",
        json={"customers": [{"customer_id": "x", "features": feats}]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["scores"][0]["value"] is None
    assert no_value_client.get("/v1/model", headers=AUTH).json()["value"] is None


def test_features_no_purchase_history_can_have_get_no_value_prediction(
    client: TestClient,
    trained: Trained,
    bundle: ModelBundle,
    value: ValueModel,
    subset: pd.DataFrame,
) -> None:
    feats = bundle.build_features(subset, as_of=trained.as_of)
    buyer = feats[feats["btyd_frequency"] >= 1].iloc[0]
    good = {k: None if v != v else float(v) for k, v in buyer[bundle.feature_names].items()}
    # a last repeat purchase after as_of: the value model refuses such a history
    bad = {**good, "btyd_recency_days": good["btyd_age_days"] + 1.0}
    X = np.array([[np.nan if bad[n] is None else bad[n] for n in bundle.feature_names]])
    with pytest.raises(ValueError, match="recency"):
        bundle.value_outputs(X)
    body = {
        "customers": [
            {"customer_id": "good", "features": good},
            {"customer_id": "bad", "features": bad},
        ]
    }
    r = client.post("/v1/scores/features", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    first, second = (s["value"] for s in r.json()["scores"])
    assert second == {
        "expected_purchases": None,
        "expected_spend": None,
        "next_purchase_date": None,
        "value_tier": "unknown",
        "horizon_days": value.horizon_days,
    }
    # the other customer of the request keeps its own value
    only_good = {"customers": body["customers"][:1]}
    alone = client.post("/v1/scores/features", json=only_good, headers=AUTH)
    assert first == alone.json()["scores"][0]["value"]
    assert first["expected_purchases"] is not None


def test_events_centuries_before_as_of_do_not_fail_the_request(
    client: TestClient, trained: Trained
) -> None:
    # schemathesis found it: ages beyond ~292 years overflow the nanosecond features
    early = {"timestamp": "1678-01-01", "event_type": "purchase"}
    body = {
        "as_of": "2026-12-07T00:00:00Z",
        "customers": [
            {"customer_id": "old", "events": [early]},
            customer_payload(trained.events, busy_customers(trained.events, trained.as_of, 1)[0]),
        ],
    }
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert all(set(s["value"]) == _VALUE_FIELDS for s in scores)
    assert scores[1]["value"]["expected_purchases"] is not None


def test_the_openapi_document_describes_every_value_field(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    # one value object for scores and for store lookups
    score_value = schemas["Score"]["properties"]["value"]
    lookup_value = schemas["CustomerScore"]["properties"]["value"]
    assert score_value["description"] and lookup_value["description"]
    ref = "#/components/schemas/CustomerValue"
    assert {"$ref": ref} in score_value["anyOf"]
    assert {"$ref": ref} in lookup_value["anyOf"]
    assert set(schemas["CustomerValue"]["properties"]) == _VALUE_FIELDS
    assert (
        "scores/features"
        in schemas["CustomerValue"]["properties"]["next_purchase_date"]["description"]
    )
    info = schemas["ServedModelInfo"]["properties"]["value"]
    assert info["description"]
    assert {"$ref": "#/components/schemas/ValueInfo"} in info["anyOf"]
    fields = schemas["ValueInfo"]["properties"]
    assert {"horizon_days", "tiers", "heads"} <= set(fields)
    assert all(p.get("description") for p in fields.values())


def test_value_over_a_real_http_server(
    client: TestClient, trained: Trained, ids: list[str]
) -> None:
    body = {
        "as_of": _as_of_text(trained),
        "customers": [customer_payload(trained.events, c) for c in ids[:2]],
    }
    with live_server(create_app(settings(trained.v1_dir))) as url:
        r = httpx.post(f"{url}/v1/scores", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    values = [s["value"] for s in r.json()["scores"]]
    assert all(set(v) == _VALUE_FIELDS for v in values)
    # the bytes on the wire say what the in-process app says
    in_process = client.post("/v1/scores", json=body, headers=AUTH).json()["scores"]
    assert values == [s["value"] for s in in_process]
