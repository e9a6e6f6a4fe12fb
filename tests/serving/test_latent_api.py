"""The HTTP API with a model that has a latent-stage model and a stage forecast.

The API computes the latent columns from the request's events with the same filter as
the batch path; ``next_stage_probabilities`` must equal the batch ``p_next_<stage>`` of
the same customer and ``as_of``, be null without history, and the latent columns are
features a ``/v1/scores/features`` request must send.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.schemas import CustomerEvents
from fastapi.testclient import TestClient

from tests.scoring.latent_support import AS_OF, LatentData, latent_bundle, simulated
from tests.serving.support import AUTH, busy_customers, customer_payload, settings


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> LatentData:
    return simulated(tmp_path_factory.mktemp("latent-api-sim"), customers=250, seed=9)


@pytest.fixture(scope="module")
def bundle(data: LatentData) -> ModelBundle:
    return latent_bundle(data)


@pytest.fixture(scope="module")
def client(bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = bundle.save(tmp_path_factory.mktemp("latent-api-model") / "bundle")
    with TestClient(create_app(settings(path))) as c:
        yield c


@pytest.fixture(scope="module")
def batch(bundle: ModelBundle, data: LatentData) -> pd.DataFrame:
    return bundle.predict_events(data.events, as_of=AS_OF).set_index("customer_id")


def test_next_stage_probabilities_equal_the_batch_forecast(
    client: TestClient, data: LatentData, bundle: ModelBundle, batch: pd.DataFrame
) -> None:
    ids = busy_customers(data.events, AS_OF, 25)
    body = {
        "as_of": f"{AS_OF}T00:00:00Z",
        "customers": [customer_payload(data.events, c) for c in ids],
    }
    r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["customer_id"] for s in scores] == ids
    spread = []
    for score in scores:
        row = batch.loc[score["customer_id"]]
        nxt = score["next_stage_probabilities"]
        assert list(nxt) == list(bundle.stages)
        for stage, p in nxt.items():
            assert p == pytest.approx(row[f"p_next_{stage}"], abs=1e-12)
        assert sum(nxt.values()) == pytest.approx(1.0, abs=1e-9)
        for stage, p in score["stage_probabilities"].items():
            assert p == pytest.approx(row[f"p_{stage}"], abs=1e-12)
        spread.append(list(nxt.values()))
    assert np.ptp(np.array(spread), axis=0).max() > 1e-3


def test_no_history_means_no_forecast(client: TestClient, data: LatentData) -> None:
    cid = busy_customers(data.events, AS_OF, 1)[0]
    body = {
        "as_of": f"{AS_OF}T00:00:00Z",
        "customers": [
            {"customer_id": "new", "events": []},
            customer_payload(data.events, cid),
            # only events at or after as_of: no history either
            {
                "customer_id": "later",
                "events": [{"timestamp": f"{AS_OF}T00:00:00Z", "event_type": "page_view"}],
            },
        ],
    }
    scores = client.post("/v1/scores", json=body, headers=AUTH).json()["scores"]
    assert scores[0]["next_stage_probabilities"] is None
    assert scores[1]["next_stage_probabilities"] is not None
    assert scores[2]["next_stage_probabilities"] is None


def test_model_info_says_it_forecasts_and_lists_the_latent_features(
    client: TestClient, bundle: ModelBundle
) -> None:
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["forecasts_stages"] is True
    assert info["horizon_days"] == bundle.horizon_days
    assert info["feature_names"] == bundle.feature_names
    assert "latent_state_0" in info["feature_names"]


def test_feature_vectors_need_the_latent_columns(
    client: TestClient, data: LatentData, bundle: ModelBundle, batch: pd.DataFrame
) -> None:
    feats = bundle.build_features(data.events, as_of=AS_OF)
    cid = str(feats.index[3])
    full = {
        k: None if v != v else float(v)  # NaN is sent as null
        for k, v in feats.loc[cid, bundle.feature_names].items()
    }
    ok = client.post(
        "/v1/scores/features",
        json={"customers": [{"customer_id": cid, "features": full}]},
        headers=AUTH,
    )
    assert ok.status_code == 200, ok.text
    nxt = ok.json()["scores"][0]["next_stage_probabilities"]
    for stage, p in nxt.items():
        assert p == pytest.approx(batch.loc[cid, f"p_next_{stage}"], abs=1e-12)

    latent = bundle.latent_filter.feature_names  # type: ignore[union-attr]
    partial = {k: v for k, v in full.items() if k not in latent}
    r = client.post(
        "/v1/scores/features",
        json={"customers": [{"customer_id": cid, "features": partial}]},
        headers=AUTH,
    )
    assert r.status_code == 422
    named = [e["loc"][-1] for e in r.json()["detail"]]
    assert named == latent
    assert all(name in e["msg"] for name, e in zip(latent, r.json()["detail"], strict=True))


def test_a_model_without_forecast_answers_null(data: LatentData) -> None:
    plain = latent_bundle(data, forecast=False)
    served = ServedModel.build(plain, name="m", version="1", uri="-", playbook=load_playbook())
    cid = busy_customers(data.events, AS_OF, 1)[0]
    customer = CustomerEvents.model_validate(customer_payload(data.events, cid))
    (score,) = served.score_events([customer], datetime(2024, 12, 31, tzinfo=UTC))
    assert score.next_stage_probabilities is None
    # the latent columns are still features of both heads
    X = served.features_from_events([customer], datetime(2024, 12, 31, tzinfo=UTC))
    assert X.shape == (1, len(plain.feature_names))
    assert not np.isnan(X[0, -len(plain.latent_filter.feature_names) :]).any()  # type: ignore[union-attr]


def test_reasons_describe_latent_features(bundle: ModelBundle) -> None:
    served = ServedModel.build(bundle, name="m", version="1", uri="-", playbook=load_playbook())
    described = dict(zip(served.feature_names, served.descriptions, strict=True))
    assert described["latent_state_0"] != "latent_state_0"
    assert "no event" in described[f"latent_p_silent_{bundle.horizon_days}"]
