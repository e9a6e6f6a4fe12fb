"""The HTTP API in-process (TestClient): every endpoint, every error path, parity with batch."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.validation import validate_events
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.registry import ModelRef
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from starlette.routing import Route

from tests.serving.support import (
    AUTH,
    KEYS,
    BlockingModel,
    Trained,
    blocking_loader,
    busy_customers,
    customer_payload,
    settings,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def v1(trained: Trained) -> ModelBundle:
    return ModelBundle.load(trained.v1_dir)


@pytest.fixture(scope="module")
def body(trained: Trained) -> dict[str, Any]:
    """Five customers with their events, scored at the simulation's as_of."""
    ids = busy_customers(trained.events, trained.as_of, 5)
    return {
        "as_of": f"{trained.as_of}T00:00:00Z",
        "customers": [customer_payload(trained.events, c) for c in ids],
    }


def one_event_body(**event: Any) -> dict[str, Any]:
    base = {"timestamp": "2024-06-01T10:00:00Z", "event_type": "page_view"}
    base.update(event)
    return {
        "as_of": "2024-07-01T00:00:00Z",
        "customers": [{"customer_id": "c1", "events": [base]}],
    }


# -- scoring ---------------------------------------------------------------------------------


def test_scores_from_events_are_complete(client: TestClient, body: dict, v1: ModelBundle) -> None:
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_version"] == doc["scores"][0]["model_version"]
    assert [s["customer_id"] for s in doc["scores"]] == [
        c["customer_id"] for c in body["customers"]
    ]
    playbook = load_playbook().resolve(v1.stages)
    for score in doc["scores"]:
        assert score["stage"] in v1.stages
        assert list(score["stage_probabilities"]) == list(v1.stages)
        assert sum(score["stage_probabilities"].values()) == pytest.approx(1.0)
        assert 0.0 <= score["churn_probability"] <= 1.0
        assert score["churn_risk"] in ("low", "medium", "high")
        for head in ("stage", "churn"):
            reasons = score["reasons"][head]
            assert len(reasons) == 3
            sizes = [abs(x["contribution"]) for x in reasons]
            assert sizes == sorted(sizes, reverse=True)
            assert all(x["feature"] in v1.feature_names and x["description"] for x in reasons)
        expected = playbook[score["stage"], score["churn_risk"]]
        assert score["next_best_action"]["action"] == expected.action
    assert len(r.headers["x-request-id"]) == 32
    assert float(r.headers["server-timing"].removeprefix("app;dur=")) > 0


def test_scores_equal_batch_scoring_of_the_same_events(
    client: TestClient, trained: Trained, v1: ModelBundle
) -> None:
    """The API's features, calibration and stage choice are the batch path's, value for value."""
    ids = busy_customers(trained.events, trained.as_of, 40)
    body = {
        "as_of": f"{trained.as_of}T00:00:00Z",
        "customers": [customer_payload(trained.events, c) for c in ids],
    }
    scores = client.post("/v1/scores", json=body, headers=AUTH).json()["scores"]
    batch = v1.predict_events(trained.events, as_of=trained.as_of).set_index("customer_id")
    for score in scores:
        row = batch.loc[score["customer_id"]]
        assert score["stage"] == row["stage"]
        assert score["churn_probability"] == pytest.approx(row["churn_probability"], abs=1e-12)
        assert score["churn_risk"] == row["churn_risk"]
        for stage, p in score["stage_probabilities"].items():
            assert p == pytest.approx(row[f"p_{stage}"], abs=1e-12)


@pytest.mark.parametrize(
    "method",
    [
        "path",  # churn margin and reasons from the server's path attributions
        "treeshap",  # churn margin and reasons from LightGBM's TreeSHAP
    ],
)
def test_served_probabilities_are_the_bundle_s_calibration_of_the_same_raw_scores(
    trained: Trained, v1: ModelBundle, method: str
) -> None:
    """The server calibrates with the bundle's own methods, not a copy of their formulas.

    The calibration is set far from the identity, so that any step the server did
    differently from the bundle (or skipped) would change the probabilities, the
    stage picked or the reasons it returns.
    """
    t, (a, b) = 2.5, (0.6, -0.8)
    bundle = dataclasses.replace(v1, stage_temperature=t, churn_platt=(a, b))
    playbook = load_playbook()

    def loader(uri: str, ref: ModelRef) -> ServedModel:
        return ServedModel.build(
            bundle,
            name="calibrated",
            version="1",
            uri=uri,
            playbook=playbook,
            reasons_method=method,
        )

    ids = busy_customers(trained.events, trained.as_of, 12)
    feats = v1.build_features(trained.events, as_of=trained.as_of)
    X = feats.loc[ids, v1.feature_names].to_numpy()
    n, f = X.shape
    vectors = [
        {"customer_id": cid, "features": {k: (None if np.isnan(v) else v) for k, v in row.items()}}
        for cid, row in feats.loc[ids, v1.feature_names].iterrows()
    ]
    events = {
        "as_of": f"{trained.as_of}T00:00:00Z",
        "customers": [customer_payload(trained.events, c) for c in ids],
    }
    with TestClient(create_app(settings(trained.v1_dir), loader=loader)) as c:
        answers = [
            c.post("/v1/scores/features", json={"customers": vectors}, headers=AUTH),
            c.post("/v1/scores", json=events, headers=AUTH),
        ]

    raw = v1.stage_booster.predict(X, raw_score=True)
    margin = v1.churn_booster.predict(X, raw_score=True)
    stage_p = bundle.stage_proba_from_raw(raw)
    churn_p = bundle.churn_proba_from_margin(margin)
    # The bundle's calibration is the documented one, and its own scoring uses it.
    e = np.exp(raw / t)
    np.testing.assert_allclose(stage_p, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(churn_p, 1.0 / (1.0 + np.exp(-(a * margin + b))), rtol=1e-12)
    np.testing.assert_array_equal(bundle.stage_proba(X), stage_p)
    np.testing.assert_array_equal(bundle.churn_proba(X), churn_p)
    # This calibration moves the probabilities far beyond the tolerances below.
    e = np.exp(raw)
    assert np.abs(stage_p - e / e.sum(axis=1, keepdims=True)).max() > 0.01
    assert np.abs(churn_p - 1.0 / (1.0 + np.exp(-margin))).max() > 0.01

    picks = np.argmax(stage_p * np.asarray(bundle.stage_weights), axis=1)
    if method == "treeshap":
        stage_c = v1.stage_booster.predict(X, pred_contrib=True).reshape(n, -1, f + 1)
        stage_c = stage_c[np.arange(n), picks]
        churn_c = v1.churn_booster.predict(X, pred_contrib=True)
    else:
        stage_c = path_attributions(v1.stage_booster, X, picks.tolist())
        churn_c = path_attributions(v1.churn_booster, X, [0] * n)
    for r in answers:
        assert r.status_code == 200, r.text
        for i, score in enumerate(r.json()["scores"]):
            assert score["stage"] == bundle.stages[picks[i]]
            assert list(score["stage_probabilities"]) == list(bundle.stages)
            assert list(score["stage_probabilities"].values()) == pytest.approx(
                stage_p[i].tolist(), abs=1e-12
            )
            assert score["churn_probability"] == pytest.approx(churn_p[i], abs=1e-12)
            # Reasons are on the calibrated logit scale: raw contributions / t, and * a.
            for head, contrib in (("stage", stage_c[i] / t), ("churn", churn_c[i] * a)):
                for reason in score["reasons"][head]:
                    j = v1.feature_names.index(reason["feature"])
                    assert reason["contribution"] == pytest.approx(contrib[j], abs=1e-9)


@pytest.mark.parametrize(
    "method",
    [
        "path",  # the default: path attributions from the server's compiled trees
        "treeshap",  # exact TreeSHAP from LightGBM
    ],
)
def test_reasons_are_this_prediction_s_contributions(
    make_client: Callable[..., TestClient], trained: Trained, v1: ModelBundle, method: str
) -> None:
    client = make_client(reasons_method=method)
    assert client.get("/v1/model", headers=AUTH).json()["reasons_method"] == method
    ids = busy_customers(trained.events, trained.as_of, 8)
    body = {
        "as_of": f"{trained.as_of}T00:00:00Z",
        "customers": [customer_payload(trained.events, c) for c in ids],
    }
    scores = client.post("/v1/scores", json=body, headers=AUTH).json()["scores"]
    feats = v1.build_features(trained.events, as_of=trained.as_of)
    X = feats.loc[ids, v1.feature_names].to_numpy()
    f = X.shape[1]
    picks = [v1.stages.index(score["stage"]) for score in scores]
    if method == "treeshap":
        stage_c = v1.stage_booster.predict(X, pred_contrib=True).reshape(len(ids), -1, f + 1)
        stage_c = stage_c[np.arange(len(ids)), picks]
        churn_c = v1.churn_booster.predict(X, pred_contrib=True)
    else:
        stage_c = path_attributions(v1.stage_booster, X, picks)
        churn_c = path_attributions(v1.churn_booster, X, [0] * len(ids))
    # Either way the attributions of a row add up to its raw score.
    raw = v1.stage_booster.predict(X, raw_score=True)[np.arange(len(ids)), picks]
    np.testing.assert_allclose(stage_c.sum(axis=1), raw, atol=1e-9)
    top_sets = set()
    for i, score in enumerate(scores):
        full = stage_c[i, :f] / v1.stage_temperature
        for reason in score["reasons"]["stage"]:
            j = v1.feature_names.index(reason["feature"])
            assert reason["contribution"] == pytest.approx(full[j], abs=1e-9)
            assert reason["value"] == (None if np.isnan(X[i, j]) else pytest.approx(X[i, j]))
        # The reasons are the largest contributions of this row, not global importances.
        assert abs(score["reasons"]["stage"][0]["contribution"]) == pytest.approx(
            np.abs(full).max(), abs=1e-9
        )
        churn = churn_c[i, :f] * v1.churn_platt[0]
        assert abs(score["reasons"]["churn"][0]["contribution"]) == pytest.approx(
            np.abs(churn).max(), abs=1e-9
        )
        top_sets.add(
            tuple(x["feature"] for head in ("stage", "churn") for x in score["reasons"][head])
        )
    # per prediction, not global importances: customers differ in their reasons (of
    # either head: busy customers may share the churn head's top features)
    assert len(top_sets) > 1


def path_attributions(booster: lgb.Booster, X: np.ndarray, outputs: list[int]) -> np.ndarray:
    """Path attributions from the booster's JSON dump, written plainly (the reference).

    Each split on a row's path credits its feature with E[child] - E[node], where E is
    the leaf-count weighted mean of the leaf values below; the last column is E[root].
    """
    dump = booster.dump_model()
    per_iter = dump["num_tree_per_iteration"]

    def expected(node: dict) -> tuple[float, float]:  # (E, count)
        if "leaf_value" in node:
            return node["leaf_value"], node["leaf_count"]
        el, nl = expected(node["left_child"])
        er, nr = expected(node["right_child"])
        return (el * nl + er * nr) / (nl + nr), nl + nr

    out = np.zeros((len(X), X.shape[1] + 1))
    for t, tree in enumerate(dump["tree_info"]):
        for i, x in enumerate(X):
            if t % per_iter != outputs[i]:
                continue
            node = tree["tree_structure"]
            e = expected(node)[0]
            out[i, -1] += e
            while "leaf_value" not in node:
                v = x[node["split_feature"]]
                missing = node["missing_type"]
                if np.isnan(v) and missing != "NaN":
                    v = 0.0
                if (missing == "Zero" and abs(v) <= 1e-35) or (missing == "NaN" and np.isnan(v)):
                    left = node["default_left"]
                else:
                    left = v <= node["threshold"]
                child = node["left_child"] if left else node["right_child"]
                e_child = expected(child)[0]
                out[i, node["split_feature"]] += e_child - e
                node, e = child, e_child
    return out


def test_scores_from_features_equal_scores_from_events(
    client: TestClient, body: dict, trained: Trained, v1: ModelBundle
) -> None:
    ids = [c["customer_id"] for c in body["customers"]]
    feats = v1.build_features(trained.events, as_of=trained.as_of)
    customers = [
        {
            "customer_id": cid,
            "features": {k: (None if np.isnan(v) else v) for k, v in feats.loc[cid].items()},
        }
        for cid in ids
    ]
    by_features = client.post("/v1/scores/features", json={"customers": customers}, headers=AUTH)
    by_events = client.post("/v1/scores", json=body, headers=AUTH)
    assert by_features.status_code == 200, by_features.text
    assert by_features.json()["as_of"] is None
    for a, b in zip(by_features.json()["scores"], by_events.json()["scores"], strict=True):
        assert a["stage"] == b["stage"]
        assert a["churn_probability"] == pytest.approx(b["churn_probability"], abs=1e-12)
        assert a["reasons"] == b["reasons"]


def test_missing_feature_is_a_422_naming_it(client: TestClient, v1: ModelBundle) -> None:
    features = dict.fromkeys(v1.feature_names, 0.0)
    del features["recency_all_days"]
    r = client.post(
        "/v1/scores/features",
        json={
            "customers": [
                {"customer_id": "a", "features": dict.fromkeys(v1.feature_names, 0.0)},
                {"customer_id": "b", "features": features},
            ]
        },
        headers=AUTH,
    )
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "customers", 1, "features", "recency_all_days"]
    assert "recency_all_days" in error["msg"]


def test_customers_without_history_get_the_empty_history_score(
    client: TestClient, v1: ModelBundle
) -> None:
    """No events, or only events at/after as_of: scored from the engine's empty history."""
    later = {"timestamp": "2024-08-01T00:00:00Z", "event_type": "purchase", "amount": 5.0}
    body = {
        "as_of": "2024-07-01T00:00:00Z",
        "customers": [
            {"customer_id": "new", "events": []},
            {"customer_id": "future", "events": [later]},
            {"customer_id": "old", "events": [{**later, "timestamp": "2024-06-01T00:00:00Z"}]},
        ],
    }
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    new, future, old = r.json()["scores"]
    empty = pd.DataFrame(
        {
            "customer_id": ["x"],
            "timestamp": pd.to_datetime(["2024-08-01"], utc=True),
            "event_type": ["purchase"],
        }
    )
    snap = pd.DataFrame(
        {"customer_id": ["nobody"], "as_of": [pd.Timestamp("2024-07-01", tz="UTC")]}
    )
    expected = v1.predict_features(v1.build_features(empty, snapshots=snap))
    assert new["churn_probability"] == pytest.approx(expected["churn_probability"][0], abs=1e-12)
    assert future["churn_probability"] == new["churn_probability"]
    assert old["churn_probability"] != new["churn_probability"]


def test_as_of_defaults_to_now(client: TestClient) -> None:
    body = one_event_body()
    del body["as_of"]
    before = datetime.now(UTC)
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200
    as_of = datetime.fromisoformat(r.json()["as_of"])
    assert before <= as_of <= datetime.now(UTC)


def test_naive_times_are_utc(client: TestClient) -> None:
    zoned = client.post("/v1/scores", json=one_event_body(), headers=AUTH).json()
    naive = one_event_body(timestamp="2024-06-01T10:00:00")
    naive["as_of"] = "2024-07-01T00:00:00"
    assert client.post("/v1/scores", json=naive, headers=AUTH).json()["scores"] == zoned["scores"]


# -- 422: bad event rows, with the same reasons as the file loader -------------------------------

BAD_ROWS = [
    # (event fields, field named in loc, the loader's quarantine reason)
    ({"event_type": " "}, "event_type", "missing_event_type"),  # blank event type
    ({"event_type": "page_veiw"}, "event_type", "unknown_event_type"),  # typo, strict policy
    ({"timestamp": "yesterday"}, "timestamp", "unparseable_timestamp"),  # not ISO 8601
    ({"timestamp": "2024-02-30T00:00:00Z"}, "timestamp", "unparseable_timestamp"),  # no such day
    ({"timestamp": "1500-01-01T00:00:00Z"}, "timestamp", "unparseable_timestamp"),  # out of range
    ({"event_type": "purchase", "amount": -5.0}, None, "negative_purchase_amount"),  # row check
    ({"amount": "lots"}, "amount", "unparseable_amount"),  # not a number
]


@pytest.mark.parametrize(("fields", "field", "reason"), BAD_ROWS)
def test_bad_event_row_is_a_422_naming_customer_event_and_reason(
    client: TestClient, fields: dict, field: str | None, reason: str
) -> None:
    body = one_event_body()
    good = body["customers"][0]["events"][0]
    bad = {**good, **fields}
    body["customers"].append({"customer_id": "c2", "events": [good, good, bad]})
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    loc = ["body", "customers", 1, "events", 2] + ([field] if field else [])
    assert error["loc"] == loc
    assert reason in error["msg"]


@pytest.mark.parametrize(("fields", "field", "reason"), BAD_ROWS)
def test_bad_event_rows_are_quarantined_for_the_same_reason_by_the_loader(
    fields: dict, field: str | None, reason: str
) -> None:
    """The API refuses exactly the rows the file loader quarantines, under the same name."""
    row = {"customer_id": "c2", "timestamp": "2024-06-01T10:00:00Z", "event_type": "page_view"}
    row.update(fields)
    row.setdefault("amount", None)
    _, quarantine, _ = validate_events(pd.DataFrame([row]).astype(str).replace("None", ""))
    assert list(quarantine["reason"]) == [reason]


def test_blank_customer_id_is_a_422(client: TestClient) -> None:
    body = one_event_body()
    body["customers"][0]["customer_id"] = "  "
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "customers", 0, "customer_id"]
    assert "missing_customer_id" in r.json()["detail"][0]["msg"]


def test_an_id_sent_twice_is_scored_twice_from_its_own_events(client: TestClient) -> None:
    body = one_event_body()
    first = body["customers"][0]
    shopper = {"timestamp": "2024-06-20T10:00:00Z", "event_type": "purchase", "amount": 30.0}
    body["customers"] += [first, {"customer_id": "c1", "events": [*first["events"], shopper]}]
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200
    a, b, c = r.json()["scores"]
    assert a["customer_id"] == b["customer_id"] == c["customer_id"] == "c1"
    assert a == b
    assert c["stage_probabilities"] != a["stage_probabilities"]


def test_unknown_field_types_are_422_with_location(client: TestClient) -> None:
    r = client.post("/v1/scores", json={"customers": "everyone"}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "customers"]


# -- 401 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Authorization header
        {"Authorization": "Bearer wrong"},  # unknown key
        {"Authorization": f"Bearer {KEYS[0]}x"},  # a key with a suffix
        {"Authorization": f"Basic {KEYS[0]}"},  # right key, wrong scheme
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/scores"),
        ("POST", "/v1/scores/features"),
        ("GET", "/v1/model"),
        ("POST", "/v1/admin/reload"),
    ],
)
def test_without_a_valid_key_every_api_route_is_401(
    client: TestClient, headers: dict, method: str, path: str
) -> None:
    r = client.request(method, path, json=one_event_body(), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == "missing or invalid API key"


def test_every_configured_key_is_accepted(client: TestClient) -> None:
    for key in KEYS:
        r = client.get("/v1/model", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200


def test_keys_file_adds_keys_and_keys_never_reach_the_logs(
    make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops keys\nfile-key-1\n\nfile-key-2\n")
    c = make_client(api_keys_file=keys)
    with caplog.at_level(logging.DEBUG):
        assert c.get("/v1/model", headers={"Authorization": "Bearer file-key-2"}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
    text = "\n".join(str(vars(r)) for r in caplog.records)
    assert "file-key-2" not in text and "nope" not in text
    assert any(getattr(r, "request_id", None) for r in caplog.records)


# -- 413 -------------------------------------------------------------------------------------------


def test_too_many_customers_is_413(make_client: Callable[..., TestClient]) -> None:
    c = make_client(max_customers_per_request=2)
    body = one_event_body()
    body["customers"] = [{"customer_id": f"c{i}", "events": []} for i in range(3)]
    r = c.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 413
    assert "max_customers_per_request" in r.json()["detail"]
    features = {"customers": [{"customer_id": f"c{i}", "features": {}} for i in range(3)]}
    assert c.post("/v1/scores/features", json=features, headers=AUTH).status_code == 413


def test_too_many_events_for_one_customer_is_413(make_client: Callable[..., TestClient]) -> None:
    c = make_client(max_events_per_customer=3)
    body = one_event_body()
    body["customers"].append({"customer_id": "c2", "events": body["customers"][0]["events"] * 4})
    r = c.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 413
    assert "customers[1] has 4 events" in r.json()["detail"]


def test_declared_body_over_the_limit_is_413_before_reading(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(max_body_bytes=2048)
    payload = json.dumps(one_event_body()).encode() + b" " * 4096
    r = c.post("/v1/scores", content=payload, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert "Content-Length" in r.json()["detail"]


def test_streamed_body_over_the_limit_is_413(make_client: Callable[..., TestClient]) -> None:
    """A chunked body declares no length: the bytes are counted as they arrive."""
    c = make_client(max_body_bytes=2048)

    def chunks() -> Iterator[bytes]:
        yield json.dumps(one_event_body()).encode()[:-1]
        for _ in range(10):
            yield b" " * 512
        yield b"}"

    r = c.post("/v1/scores", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert "the limit is 2048 bytes" in r.json()["detail"]


# -- 503 -------------------------------------------------------------------------------------------


def test_without_a_model_scoring_is_503_and_not_ready(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(model_uri=None)
    r = c.post("/v1/scores", json=one_event_body(), headers=AUTH)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert c.get("/v1/model", headers=AUTH).status_code == 503
    assert c.post("/v1/admin/reload", headers=AUTH).status_code == 503
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "no_model")


def test_model_that_cannot_load_leaves_the_server_up_without_a_model(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    c = make_client(model_uri=tmp_path / "nothing-here")
    assert c.get("/readyz").status_code == 503
    r = c.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 502
    assert "nothing-here" in r.json()["detail"]


def test_overload_is_503_with_retry_after_and_never_queues(trained: Trained) -> None:
    holder: dict[str, BlockingModel] = {}
    loader = blocking_loader(holder)

    app = create_app(
        settings(trained.v1_dir, max_in_flight=1, retry_after_seconds=7, inline_event_limit=0),
        loader=loader,
    )
    with TestClient(app) as c:
        model = holder["model"]
        first: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: first.update(r=c.post("/v1/scores", json=one_event_body(), headers=AUTH))
        )
        worker.start()
        assert model.entered.wait(10)
        started = time.perf_counter()
        second = c.post("/v1/scores", json=one_event_body(), headers=AUTH)
        assert time.perf_counter() - started < 2  # answered at once, not queued
        assert second.status_code == 503
        assert second.headers["retry-after"] == "7"
        assert "in progress" in second.json()["detail"]
        # Probes are not counted against the limit.
        assert c.get("/readyz").status_code == 200
        model.gate.set()
        worker.join(10)
        assert first["r"].status_code == 200
        assert c.post("/v1/scores", json=one_event_body(), headers=AUTH).status_code == 200


def test_draining_server_is_not_ready(client: TestClient) -> None:
    client.app.state.server.draining = True  # type: ignore[attr-defined]
    r = client.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (503, "draining")


# -- model, reload, metrics, request ids --------------------------------------------------------


def test_model_endpoint_describes_the_served_model(client: TestClient, v1: ModelBundle) -> None:
    doc = client.get("/v1/model", headers=AUTH).json()
    assert doc["stages"] == list(v1.stages)
    assert doc["feature_count"] == len(v1.feature_names) == len(doc["feature_names"])
    assert doc["horizon_days"] == v1.horizon_days
    assert doc["run_id"] == v1.metadata["run_id"]
    assert datetime.fromisoformat(doc["loaded_at"]) <= datetime.now(UTC)


def test_admin_reload_swaps_in_a_newly_promoted_version(
    make_client: Callable[..., TestClient], trained: Trained
) -> None:
    client = MlflowClient(tracking_uri=trained.tracking_uri)
    client.set_registered_model_alias(trained.name, "reload-test", "1")
    c = make_client(model_uri=f"models:/{trained.name}@reload-test")
    assert c.get("/v1/model", headers=AUTH).json()["version"] == "1"
    same = c.post("/v1/admin/reload", headers=AUTH).json()
    assert same == {"changed": False, "previous_version": "1", "version": "1"}
    client.set_registered_model_alias(trained.name, "reload-test", "2")
    swapped = c.post("/v1/admin/reload", headers=AUTH).json()
    assert swapped == {"changed": True, "previous_version": "1", "version": "2"}
    r = c.post("/v1/scores", json=one_event_body(), headers=AUTH).json()
    assert r["model_version"] == r["scores"][0]["model_version"] == "2"
    metrics = c.get("/metrics").text
    assert f'lifecycle_model_info{{name="{trained.name}",version="2"}} 1.0' in metrics
    assert 'version="1"' not in metrics.split("lifecycle_model_info")[-1]


def test_background_poll_picks_up_a_promotion(
    make_client: Callable[..., TestClient], trained: Trained
) -> None:
    client = MlflowClient(tracking_uri=trained.tracking_uri)
    client.set_registered_model_alias(trained.name, "poll-test", "1")
    c = make_client(model_uri=f"models:/{trained.name}@poll-test", reload_interval_seconds=0.2)
    assert c.get("/readyz").json()["model_version"] == "1"
    client.set_registered_model_alias(trained.name, "poll-test", "2")
    deadline = time.monotonic() + 30
    while c.get("/readyz").json()["model_version"] != "2":
        assert time.monotonic() < deadline, "the poller never swapped the model"
        time.sleep(0.1)


def test_metrics_count_requests_latency_and_model(client: TestClient) -> None:
    client.post("/v1/scores", json=one_event_body(), headers=AUTH)
    client.post("/v1/scores", json=one_event_body(), headers={})
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'lifecycle_http_requests_total{method="POST",route="/v1/scores",status="200"} 1.0' in text
    )
    assert (
        'lifecycle_http_requests_total{method="POST",route="/v1/scores",status="401"} 1.0' in text
    )
    assert 'route="other",status="404"' in text
    assert 'lifecycle_http_request_duration_seconds_count{route="/v1/scores"} 2.0' in text
    assert 'lifecycle_customers_scored_total{endpoint="events"} 1.0' in text
    assert "lifecycle_model_info{" in text


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),  # a short token is echoed
        ("x" * 200, False),  # too long: replaced
        ("bad id\twith spaces", False),  # unsafe characters: replaced
    ],
)
def test_request_id_is_echoed_or_generated(client: TestClient, sent: str, kept: bool) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": sent})
    assert (r.headers["x-request-id"] == sent) is kept
    assert r.headers["x-request-id"]


def test_every_route_is_on_the_app_s_own_router(client: TestClient) -> None:
    """Routes are matched directly: an included router is resolved again on every request."""
    routes = client.app.router.routes  # type: ignore[attr-defined]
    assert all(isinstance(r, Route) for r in routes), routes  # APIRoute is a Route
    paths = {r.path for r in routes if isinstance(r, APIRoute)}
    assert paths == {
        "/v1/scores",
        "/v1/scores/features",
        "/v1/model",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/customers/{customer_id}",
        "/v1/customers/{customer_id}/history",
        "/v1/runs",
        "/v1/segments",
        "/v1/transitions",
    }


def test_every_status_is_documented_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/scores", "/v1/scores/features"):
        assert {"200", "400", "401", "408", "413", "422", "503"} <= set(
            paths[path]["post"]["responses"]
        )
    assert {"200", "401", "503"} <= set(paths["/v1/model"]["get"]["responses"])
    assert {"200", "401", "408", "413", "502", "503"} <= set(
        paths["/v1/admin/reload"]["post"]["responses"]
    )
    assert {"200", "503"} <= set(paths["/readyz"]["get"]["responses"])
    retry = paths["/v1/scores"]["post"]["responses"]["503"]["headers"]
    assert "Retry-After" in retry
