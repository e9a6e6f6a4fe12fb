"""The score store routes (issue 15) on the real app over a real SQLite store: keys, 404s,
segments and transitions with their cursors, the stage forecast and the customer value
(issue 16), and the OpenAPI document of every answer.

No model is loaded: the lookup routes work without one (scoring answers 503)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from customer_lifecycle.scoring.store import open_store, write_run
from customer_lifecycle.serving.app import create_app
from fastapi.testclient import TestClient

from tests.scoring.test_store import (
    RUN1,
    RUN2,
    customer_value,
    next_probabilities,
    scores_file,
)
from tests.serving.support import KEYS, settings

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("store")
    path = root / "scores.db"
    engine = open_store(path)
    # run 1 from a model without a stage forecast nor value, run 2 with both ("c": no
    # history, so no forecast and no value prediction)
    for rows, as_of in ((RUN1, "2024-11-30"), (RUN2, "2024-12-31")):
        later = rows is RUN2
        file = scores_file(
            root / f"{as_of}.parquet",
            rows,
            forecast=later,
            without_forecast=("c",),
            value=later,
            without_value=("c",),
        )
        write_run(engine, file, model_name="m", model_version="3", as_of=as_of,
                  value_horizon_days=365)  # fmt: skip
    engine.dispose()
    return str(path)


@pytest.fixture
def client(store: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings(None), store_url=store)) as c:
        yield c


def test_lookup_by_id(client: TestClient) -> None:
    r = client.get("/v1/customers/007", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stage"] == "active" and body["churn_risk"] == "low"
    assert body["stage_probabilities"]["active"] == 0.6
    assert body["as_of"].startswith("2024-12-31") and body["model_version"] == "3"
    assert body["churn_rank"] == 20.0 and body["stage_since"].startswith("2024-12-31")
    assert client.post("/v1/scores", headers=AUTH, json={}).status_code in (422, 503)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/007",  # lookup
        "/v1/customers/007/history",  # history
        "/v1/runs",  # runs
        "/v1/segments",  # segments
        "/v1/transitions",  # transitions
    ],
)
def test_every_route_needs_a_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path, headers=AUTH).status_code == 200


def test_unknown_ids_and_runs_are_404(client: TestClient) -> None:
    for path in ("/v1/customers/nobody", "/v1/customers/nobody/history"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 404 and "nobody" in r.json()["detail"]
    assert client.get("/v1/segments?run_id=99", headers=AUTH).status_code == 404
    assert client.get("/v1/transitions?to_run=1", headers=AUTH).status_code == 404


def test_history_newest_first(client: TestClient) -> None:
    body = client.get("/v1/customers/a/history", headers=AUTH).json()
    assert [s["churn_risk"] for s in body["scores"]] == ["high", "low"]


def test_the_stage_forecast_is_returned(client: TestClient) -> None:
    body = client.get("/v1/customers/007", headers=AUTH).json()
    assert body["next_stage_probabilities"] == next_probabilities("007")
    assert client.get("/v1/customers/c", headers=AUTH).json()["next_stage_probabilities"] is None
    history = client.get("/v1/customers/a/history", headers=AUTH).json()["scores"]
    assert [s["next_stage_probabilities"] for s in history] == [next_probabilities("a"), None]
    page = client.get("/v1/segments?risk=high", headers=AUTH).json()
    assert {c["customer_id"]: c["next_stage_probabilities"] for c in page["customers"]} == {
        "a": next_probabilities("a"),
        "b": next_probabilities("b"),
        "c": None,
    }
    old = client.get("/v1/segments?run_id=1&limit=1", headers=AUTH).json()["customers"]
    assert old[0]["next_stage_probabilities"] is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CustomerScore"]
    assert "next_stage_probabilities" in schema["properties"]


def value_doc(customer_id: str) -> dict[str, object]:
    """The ``value`` object the API gives for :func:`customer_value` (horizon 365 days)."""
    return {**customer_value(customer_id), "horizon_days": 365}


def test_the_customer_value_is_returned(client: TestClient) -> None:
    body = client.get("/v1/customers/007", headers=AUTH).json()
    assert body["value"] == value_doc("007")
    assert client.get("/v1/customers/c", headers=AUTH).json()["value"] == {
        "expected_purchases": None,
        "expected_spend": None,
        "next_purchase_date": None,
        "value_tier": "unknown",
        "horizon_days": 365,
    }
    # d was scored only in run 1, whose model had no value model
    assert client.get("/v1/customers/d", headers=AUTH).json()["value"] is None
    history = client.get("/v1/customers/a/history", headers=AUTH).json()["scores"]
    assert [s["value"] for s in history] == [value_doc("a"), None]
    runs = client.get("/v1/runs", headers=AUTH).json()["runs"]
    assert [r["value_horizon_days"] for r in runs] == [365, None]


def test_segments_by_value_tier(client: TestClient) -> None:
    tiers = {c: customer_value(c)["value_tier"] for c, *_ in RUN2 if c != "c"} | {"c": "unknown"}
    for tier in ("top_1", "top_5", "rest", "unknown", "top_50"):
        body = client.get("/v1/segments", params={"value_tier": tier}, headers=AUTH).json()
        assert [c["customer_id"] for c in body["customers"]] == sorted(
            c for c, t in tiers.items() if t == tier
        )
        assert all(c["value"]["value_tier"] == tier for c in body["customers"])
    high = client.get("/v1/segments?value_tier=rest&risk=high", headers=AUTH).json()
    assert [c["customer_id"] for c in high["customers"]] == [
        c for c, _, p in RUN2 if tiers[c] == "rest" and p >= 0.6
    ]
    old = client.get("/v1/segments?run_id=1&value_tier=unknown", headers=AUTH).json()
    assert old["customers"] == [] and old["run"]["value_horizon_days"] is None
    for bad in ("gold", "top_", "rest\n"):
        assert (
            client.get("/v1/segments", params={"value_tier": bad}, headers=AUTH).status_code == 422
        )


def test_the_openapi_document_describes_the_value(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    value = schemas["CustomerValue"]["properties"]
    assert set(value) == {
        "expected_purchases",
        "expected_spend",
        "next_purchase_date",
        "value_tier",
        "horizon_days",
    }
    assert all(p.get("description") for p in value.values())
    assert schemas["CustomerScore"]["properties"]["value"]["description"]
    params = doc["paths"]["/v1/segments"]["get"]["parameters"]
    tier = next(p for p in params if p["name"] == "value_tier")
    assert "top_5" in tier["description"]


def test_segments_page_by_cursor(client: TestClient) -> None:
    ids, cursor = [], None
    while True:
        params = {"risk": "high", "limit": 1, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/segments", params=params, headers=AUTH).json()
        ids += [c["customer_id"] for c in body["customers"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert ids == ["a", "b", "c"]
    since = client.get(
        "/v1/segments", params={"stage_changed_since": "2024-12-01T00:00:00Z"}, headers=AUTH
    ).json()
    assert [c["customer_id"] for c in since["customers"]] == ["007", "e"]
    ranged = client.get("/v1/segments?min_churn=0.75&max_churn=0.85", headers=AUTH).json()
    assert [c["customer_id"] for c in ranged["customers"]] == ["b"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("cursor=garbage", 400),  # not a cursor of ours
        ("min_churn=0.9&max_churn=0.1", 400),  # empty range
        ("risk=extreme", 422),  # not a band
        ("limit=0", 422),  # below the page size
        ("min_churn=2", 422),  # not a probability
    ],
)
def test_bad_segment_queries(client: TestClient, query: str, status: int) -> None:
    assert client.get(f"/v1/segments?{query}", headers=AUTH).status_code == status


def test_transitions(client: TestClient) -> None:
    body = client.get("/v1/transitions?to_risk=high", headers=AUTH).json()
    assert (body["from_run"]["run_id"], body["to_run"]["run_id"]) == (1, 2)
    assert [(t["customer_id"], t["from_risk"]) for t in body["transitions"]] == [
        ("a", "low"),
        ("c", "medium"),
    ]


def test_without_a_store_the_routes_answer_404(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIFECYCLE_STORE_URL", raising=False)
    with TestClient(create_app(settings(None))) as c:
        for path in ("/v1/customers/a", "/v1/runs", "/v1/segments", "/v1/transitions"):
            r = c.get(path, headers=AUTH)
            assert r.status_code == 404 and "--store" in r.json()["detail"]


def test_the_openapi_document_lists_every_answer(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/customers/{customer_id}": {"200", "401", "404", "422"},
        "/v1/customers/{customer_id}/history": {"200", "401", "404", "422"},
        "/v1/runs": {"200", "401", "404"},
        "/v1/segments": {"200", "400", "401", "404", "422"},
        "/v1/transitions": {"200", "400", "401", "404", "422"},
    }
    for path, codes in expected.items():
        assert set(paths[path]["get"]["responses"]) >= codes, path
