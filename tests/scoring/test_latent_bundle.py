"""Bundles with a latent-stage model and a stage forecast: persisted, validated, scored.

The model is a real one (the HMM fitted on a simulated log, small heads on its
features); the forecast columns ``p_next_<stage>`` must be the documented product
``forecast_states(latent states) @ C``, sum to 1, survive a save and load, agree
between the in-memory and the streaming batch path, and never be read as stages by
the score store.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.latent import forecast_states
from customer_lifecycle.scoring.batch import score_file
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, ModelBundle
from customer_lifecycle.scoring.store import queries as q
from customer_lifecycle.scoring.store.schema import open_store
from customer_lifecycle.scoring.store.writer import write_run

from tests.scoring.latent_support import AS_OF, LatentData, latent_bundle, simulated


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> LatentData:
    return simulated(tmp_path_factory.mktemp("latent-sim"))


@pytest.fixture(scope="module")
def bundle(data: LatentData) -> ModelBundle:
    return latent_bundle(data)


@pytest.fixture(scope="module")
def saved(bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle.save(tmp_path_factory.mktemp("latent-bundle") / "bundle")


def _next_columns(bundle: ModelBundle) -> list[str]:
    return [f"p_next_{s}" for s in bundle.stages]


def test_round_trip_keeps_the_latent_model_and_the_forecast(
    bundle: ModelBundle, saved: Path, data: LatentData
) -> None:
    loaded = ModelBundle.load(saved)
    assert json.loads((saved / BUNDLE_FILE).read_text())["format_version"] == 3
    assert loaded.feature_names == bundle.feature_names
    assert loaded.feature_names[-len(bundle.latent_filter.feature_names) :] == (  # type: ignore[union-attr]
        bundle.latent_filter.feature_names  # type: ignore[union-attr]
    )
    assert loaded.stage_forecast == bundle.stage_forecast
    assert loaded.latent is not None and bundle.latent is not None
    assert loaded.latent.to_dict() == bundle.latent.to_dict()
    before = bundle.predict_events(data.events, as_of=AS_OF)
    after = loaded.predict_events(data.events, as_of=AS_OF)
    pd.testing.assert_frame_equal(before, after)
    assert list(after.columns[1:]) == loaded.output_columns
    assert list(after.columns[-len(bundle.stages) :]) == _next_columns(bundle)


def test_next_stage_proba_is_the_forecast_of_the_filtered_states(
    bundle: ModelBundle, data: LatentData
) -> None:
    feats = bundle.build_features(data.events, as_of=AS_OF)
    X = feats[bundle.feature_names].to_numpy()
    latent = bundle.latent
    assert latent is not None and bundle.stage_forecast is not None
    states = feats[[f"latent_state_{k}" for k in range(latent.n_states)]].to_numpy()
    expected = forecast_states(states, latent, bundle.horizon_days) @ np.array(
        bundle.stage_forecast
    )
    got = bundle.next_stage_proba(X)
    assert got is not None
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    # customers differ: the forecast depends on the history, not only on the model
    assert np.ptp(got, axis=0).max() > 1e-3
    # a row without history (NaN latent columns) has no forecast
    X[0, len(bundle.definition.feature_names()) :] = np.nan
    assert np.isnan(bundle.next_stage_proba(X)[0]).all()  # type: ignore[index]


def test_model_features_are_the_definition_s_then_the_latent_ones(
    bundle: ModelBundle, data: LatentData
) -> None:
    feats = bundle.build_features(data.events, as_of=AS_OF)
    plain = build_features(data.events, as_of=AS_OF, definition=bundle.definition)
    assert list(feats.columns) == bundle.feature_names
    pd.testing.assert_frame_equal(feats[list(plain.columns)], plain)


def test_a_bundle_without_forecast_has_no_p_next(data: LatentData, tmp_path: Path) -> None:
    plain = latent_bundle(data, forecast=False)
    assert plain.next_stage_proba(np.zeros((1, len(plain.feature_names)))) is None
    scores = ModelBundle.load(plain.save(tmp_path / "b")).predict_events(data.events, as_of=AS_OF)
    assert not [c for c in scores.columns if c.startswith("p_next_")]
    assert list(scores.columns[1:]) == plain.output_columns


def test_a_format_1_bundle_still_loads(
    bundle: ModelBundle, data: LatentData, tmp_path: Path
) -> None:
    old = ModelBundle(
        bundle.definition,
        bundle.stages,
        _retrain(bundle, data, "stage"),
        _retrain(bundle, data, "churn"),
    )
    path = old.save(tmp_path / "old")
    doc = json.loads((path / BUNDLE_FILE).read_text())
    # what format 1 wrote: no latent fields at all
    del doc["latent"], doc["stage_forecast"]
    doc["format_version"] = 1
    (path / BUNDLE_FILE).write_text(json.dumps(doc))
    loaded = ModelBundle.load(path)
    assert loaded.latent is None and loaded.stage_forecast is None
    assert loaded.feature_names == bundle.definition.feature_names()
    pd.testing.assert_frame_equal(
        loaded.predict_events(data.events, as_of=AS_OF),
        old.predict_events(data.events, as_of=AS_OF),
    )
    # format 1 never held a latent model: one that claims to is refused
    doc["latent"] = bundle.latent.to_dict()  # type: ignore[union-attr]
    (path / BUNDLE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="format 1 bundle cannot hold a latent model"):
        ModelBundle.load(path)


def _retrain(bundle: ModelBundle, data: LatentData, head: str) -> Any:
    """A head on the definition's features only (what a format 1 bundle holds)."""
    import lightgbm as lgb

    X = build_features(data.events, as_of=AS_OF, definition=bundle.definition).to_numpy()
    y = np.random.default_rng(3).integers(0, len(bundle.stages) if head == "stage" else 2, len(X))
    params: dict[str, Any] = {"verbose": -1, "num_leaves": 7, "num_threads": 1}
    if head == "stage":
        params.update(objective="multiclass", num_class=len(bundle.stages))
    else:
        params.update(objective="binary")
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=4)


_DELETE = object()


def _edit(key: str, change: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        value = change(doc.get(key))
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value

    return edit


def _latent(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["latent"][field] = value

    return edit


def _scale_row(doc: dict[str, Any]) -> None:
    doc["stage_forecast"][0] = [2 * x for x in doc["stage_forecast"][0]]


def _drop_latent_names(doc: dict[str, Any]) -> None:
    doc["feature_names"] = [n for n in doc["feature_names"] if not n.startswith("latent_")]


def _latent_transitions_not_stochastic(doc: dict[str, Any]) -> None:
    doc["latent"]["transitions"][0][0] += 0.5


BROKEN = [
    pytest.param(_edit("latent", lambda _: "not json object"), "latent", id="latent not an object"),
    pytest.param(_latent("format", "other/9"), "latent parameters: format", id="latent format"),
    pytest.param(_latent("rates", "x"), "rates is not an array of numbers", id="latent rates"),
    pytest.param(
        _latent_transitions_not_stochastic, "transitions does not sum to 1", id="latent rows"
    ),
    pytest.param(_latent("initial", [1.0]), "shape", id="latent shapes"),
    pytest.param(
        _edit("stage_forecast", lambda c: c[:-1]), "stage_forecast has shape", id="C rows"
    ),
    pytest.param(
        _edit("stage_forecast", lambda c: [row[:-1] for row in c]),
        "stage_forecast has shape",
        id="C columns",
    ),
    pytest.param(_scale_row, "stage_forecast rows must sum to 1", id="C not stochastic"),
    pytest.param(
        _edit("stage_forecast", lambda c: [[-x for x in c[0]], *c[1:]]),
        "non-negative",
        id="C negative",
    ),
    pytest.param(
        _edit("stage_forecast", lambda c: [[None for _ in c[0]], *c[1:]]),
        "stage_forecast",
        id="C not numbers",
    ),
    pytest.param(
        _edit("latent", lambda _: None), "stage_forecast without a latent model", id="C alone"
    ),
    pytest.param(_drop_latent_names, "feature names do not match", id="latent names missing"),
    pytest.param(_edit("horizon_days", lambda h: h + 1), "feature names", id="latent horizon"),
]


@pytest.mark.parametrize(("corrupt", "message"), BROKEN)
def test_a_broken_latent_part_is_refused_in_one_line(
    saved: Path, tmp_path: Path, corrupt: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = Path(shutil.copytree(saved, tmp_path / "bundle"))
    doc = json.loads((path / BUNDLE_FILE).read_text())
    corrupt(doc)
    (path / BUNDLE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="is refused") as info:
        ModelBundle.load(path)
    assert "\n" not in str(info.value)
    assert message in str(info.value)


def test_heads_must_take_the_latent_features(
    bundle: ModelBundle, data: LatentData, tmp_path: Path
) -> None:
    # heads trained on the definition's features only, in a bundle that has a latent model
    with pytest.raises(ValueError, match="head takes"):
        path = ModelBundle(
            bundle.definition,
            bundle.stages,
            _retrain(bundle, data, "stage"),
            _retrain(bundle, data, "churn"),
            latent=bundle.latent,
        ).save(tmp_path / "b")
        ModelBundle.load(path)


def test_a_stage_name_that_reads_as_a_forecast_column_is_refused(bundle: ModelBundle) -> None:
    stages = (*bundle.stages[:-1], f"next_{bundle.stages[0]}")
    with pytest.raises(ValueError, match="clash with a forecast column"):
        ModelBundle(bundle.definition, stages, bundle.stage_booster, bundle.churn_booster)


def test_batch_output_has_the_forecast_columns(
    bundle: ModelBundle, data: LatentData, tmp_path: Path
) -> None:
    # small chunks: the latent columns depend on each customer's own events only
    scores, _ = score_file(
        data.path, model=bundle, as_of=AS_OF, out=tmp_path / "s.parquet", chunk_customers=20
    )
    assert scores is not None
    written = pd.read_parquet(tmp_path / "s.parquet")
    assert list(written.columns[1:]) == bundle.output_columns
    nxt = written[_next_columns(bundle)].to_numpy()
    np.testing.assert_allclose(nxt.sum(axis=1), 1.0, atol=1e-9)
    feats = bundle.build_features(data.events, as_of=AS_OF)
    expected = pd.DataFrame(
        bundle.next_stage_proba(feats[bundle.feature_names].to_numpy()),
        index=feats.index.astype(str),
        columns=_next_columns(bundle),
    )
    got = written.set_index("customer_id")[_next_columns(bundle)]
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_names=False)
    reference = bundle.predict_events(data.events, as_of=AS_OF).set_index("customer_id")
    pd.testing.assert_frame_equal(
        written.set_index("customer_id").sort_index(), reference.sort_index()
    )


def test_the_store_does_not_read_p_next_as_stages(
    bundle: ModelBundle, data: LatentData, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    score_file(data.path, model=bundle, as_of=AS_OF, out=out)
    assert any(c.startswith("p_next_") for c in pd.read_csv(out, nrows=0).columns)
    engine = open_store(tmp_path / "store.db")
    try:
        run = write_run(engine, out, model_name="m", model_version="1", as_of=AS_OF)
        assert run.stages == bundle.stages
        with engine.connect() as conn:
            page = q.segment(conn, q.SegmentFilter(), limit=1000)
        assert page.items
        for item in page.items:
            assert set(item.stage_probabilities) == set(bundle.stages)
    finally:
        engine.dispose()
