"""Bundles with a customer value model (format 3): persisted, validated and scored.

The value model is fitted on a simulated log (BG/NBD and Gamma-Gamma by
``training.value``); the learned heads are small LightGBM boosters on the definition's
features, so the heads' path is exercised whatever the held-out rule decides. What is
served must be exactly ``predict_value`` + the never-buyer fill + the tiers, whether
scored at once, in chunks or after a save and load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.btyd import (
    TierThresholds,
    ValueModel,
    predict_value,
    value_tier,
)
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.scoring.batch import score_file
from customer_lifecycle.scoring.bundle import (
    BUNDLE_FILE,
    STAGE_FILE,
    VALUE_COLUMNS,
    VALUE_FILES,
    ModelBundle,
)
from customer_lifecycle.scoring.store import open_store, queries
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.value import fit_value
from typer.testing import CliRunner

from customer_lifecycle.cli import app

AS_OF = "2024-12-31"
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("value-sim")
    write_dataset(out, customers=1500, seed=3, as_of=[AS_OF])
    return out


@pytest.fixture(scope="module")
def events(sim: Path) -> pd.DataFrame:
    return load_events(sim / "events.parquet")[0]


@pytest.fixture(scope="module")
def features(events: pd.DataFrame) -> pd.DataFrame:
    return build_features(events, as_of=AS_OF)


@pytest.fixture(scope="module")
def value(events: pd.DataFrame) -> ValueModel:
    # the baselines only: the heads' path is exercised with boosters made here
    fit = fit_value(
        events,
        AS_OF,
        definition=load_definition(),
        horizon_days=120,
        learned_heads=False,
        say=lambda _: None,
    )
    assert fit is not None
    return fit.model


def _heads(features: pd.DataFrame) -> tuple[lgb.Booster, lgb.Booster, lgb.Booster, lgb.Booster]:
    """Stage, churn and two log-link value heads on the definition's columns."""
    names = load_definition().feature_names()
    X = features[names].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(0)
    params = {"verbose": -1, "num_threads": 1, "num_leaves": 7, "min_data_in_leaf": 20}
    stage = lgb.train(
        {**params, "objective": "multiclass", "num_class": len(STAGES)},
        lgb.Dataset(X, rng.integers(0, len(STAGES), len(X)), feature_name=names),
        6,
    )
    churn = lgb.train(
        {**params, "objective": "binary"},
        lgb.Dataset(X, rng.integers(0, 2, len(X)), feature_name=names),
        6,
    )
    count = features["purchase_days"].to_numpy(dtype=np.float64)
    purchases = lgb.train(
        {**params, "objective": "poisson"}, lgb.Dataset(X, count, feature_name=names), 8
    )
    spend = lgb.train(
        {**params, "objective": "tweedie"}, lgb.Dataset(X, 30.0 * count, feature_name=names), 8
    )
    return stage, churn, purchases, spend


@pytest.fixture(scope="module")
def bundle(features: pd.DataFrame, value: ValueModel) -> ModelBundle:
    stage, churn, _, _ = _heads(features)
    return ModelBundle(load_definition(), STAGES, stage, churn, value=value)


@pytest.fixture(scope="module")
def learned_bundle(features: pd.DataFrame, value: ValueModel) -> ModelBundle:
    stage, churn, purchases, spend = _heads(features)
    with_heads = dataclasses.replace(value, heads=("purchases", "spend"))
    return ModelBundle(
        load_definition(),
        STAGES,
        stage,
        churn,
        value=with_heads,
        value_purchases_booster=purchases,
        value_spend_booster=spend,
    )


@pytest.fixture(scope="module")
def saved(learned_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learned_bundle.save(tmp_path_factory.mktemp("value-bundle") / "bundle")


def _matrix(bundle: ModelBundle, features: pd.DataFrame) -> np.ndarray:
    return features[bundle.feature_names].to_numpy(dtype=np.float64)


# -- what is served ---------------------------------------------------------------------


def test_value_outputs_are_predict_value_plus_fill_plus_tiers(
    bundle: ModelBundle, features: pd.DataFrame, value: ValueModel
) -> None:
    out = bundle.value_outputs(_matrix(bundle, features), pd.Timestamp(AS_OF, tz="UTC"))
    assert out is not None and tuple(out) == VALUE_COLUMNS
    assert value.gamma_gamma is not None
    direct = predict_value(
        value.bgnbd,
        value.gamma_gamma,
        features["btyd_frequency"],
        features["btyd_recency_days"],
        features["btyd_age_days"],
        features["btyd_mean_spend"],
        horizon_days=value.horizon_days,
    )
    never = features["btyd_age_days"].isna().to_numpy()
    assert never.any() and (~never).any()
    purchases = direct["expected_purchases"].fillna(value.never_buyer_purchases).to_numpy()
    spend = direct["expected_spend"].fillna(value.never_buyer_spend).to_numpy()
    np.testing.assert_allclose(out["expected_purchases"], purchases, rtol=1e-12)
    np.testing.assert_allclose(out["expected_spend"], spend, rtol=1e-12)
    assert out["expected_purchases"].dtype == np.float64
    assert list(out["value_tier"]) == list(value_tier(spend, value.tiers))
    days = direct["days_to_next_purchase"].to_numpy()
    start = pd.Timestamp(AS_OF, tz="UTC")
    expected_dates = [
        None if math.isnan(d) else (start + pd.Timedelta(days=d)).date().isoformat() for d in days
    ]
    assert list(out["next_purchase_date"]) == expected_dates
    assert any(d is not None for d in expected_dates)
    # the top tiers hold about the shares they were set for on this very population
    top = np.mean(out["value_tier"] == "top_10") + np.mean(
        np.isin(out["value_tier"], ["top_1", "top_5"])
    )
    assert 0.08 <= top <= 0.12


def test_never_buyers_get_the_measured_fill_and_no_date(
    bundle: ModelBundle, features: pd.DataFrame, value: ValueModel
) -> None:
    out = bundle.value_outputs(_matrix(bundle, features), pd.Timestamp(AS_OF))
    assert out is not None
    never = features["btyd_age_days"].isna().to_numpy()
    assert value.never_buyer_purchases > 0  # measured, not 0 by fiat
    assert (out["expected_purchases"][never] == value.never_buyer_purchases).all()
    assert (out["expected_spend"][never] == value.never_buyer_spend).all()
    assert all(d is None for d in out["next_purchase_date"][never])


def test_learned_heads_replace_the_baselines_through_the_tree_kernels(
    learned_bundle: ModelBundle, features: pd.DataFrame
) -> None:
    own = features[load_definition().feature_names()].to_numpy(dtype=np.float64)
    out = learned_bundle.value_outputs(_matrix(learned_bundle, features), None)
    assert out is not None and learned_bundle.value is not None
    for head, booster in (
        ("purchases", learned_bundle.value_purchases_booster),
        ("spend", learned_bundle.value_spend_booster),
    ):
        assert booster is not None
        np.testing.assert_allclose(out[f"expected_{head}"], booster.predict(own), rtol=1e-9)
    assert list(out["value_tier"]) == list(
        value_tier(out["expected_spend"], learned_bundle.value.tiers)
    )
    assert all(d is None for d in out["next_purchase_date"])  # no as_of, no dates


def test_scores_end_with_the_value_columns_and_dates_need_as_of(
    bundle: ModelBundle, features: pd.DataFrame, events: pd.DataFrame
) -> None:
    assert bundle.output_columns[-4:] == list(VALUE_COLUMNS) == list(ModelBundle.VALUE_COLUMNS)
    scored = bundle.predict_events(events, as_of=AS_OF)
    assert list(scored.columns[1:]) == bundle.output_columns
    assert scored["next_purchase_date"].notna().any()
    undated = bundle.predict_features(features)
    assert undated["next_purchase_date"].isna().all()
    pd.testing.assert_series_equal(undated["value_tier"], scored["value_tier"])
    matrix = bundle.predict_matrix(_matrix(bundle, features), as_of=pd.Timestamp(AS_OF))
    assert set(VALUE_COLUMNS) <= set(matrix)


def test_dates_past_the_last_representable_day_are_empty_not_wrapped(
    bundle: ModelBundle, features: pd.DataFrame
) -> None:
    X = _matrix(bundle, features)
    near = bundle.value_outputs(X, pd.Timestamp("2024-12-31", tz="UTC"))
    late = bundle.value_outputs(X, pd.Timestamp("2262-03-01", tz="UTC"))
    assert near is not None and late is not None
    dated = [d for d in late["next_purchase_date"] if d is not None]
    # the same customers are dated in 2024 (so there are dates to lose), and no late
    # date wrapped round to the 1600s
    assert sum(d is not None for d in near["next_purchase_date"]) > len(dated)
    assert all("2262-03-01" <= d <= "2262-04-11" for d in dated)


def test_tiers_are_the_same_in_chunks_and_at_once(
    bundle: ModelBundle, sim: Path, events: pd.DataFrame, tmp_path: Path
) -> None:
    whole = bundle.predict_events(events, as_of=AS_OF).set_index("customer_id")
    chunked, _ = score_file(
        sim / "events.parquet",
        model=bundle,
        as_of=AS_OF,
        out=tmp_path / "scores.csv",
        chunk_customers=100,
        partitions=8,
    )
    assert chunked is not None
    chunked = chunked.set_index("customer_id").loc[whole.index]
    assert (chunked["value_tier"] == whole["value_tier"]).all()
    assert (
        chunked["next_purchase_date"].fillna("") == whole["next_purchase_date"].fillna("")
    ).all()
    np.testing.assert_allclose(chunked["expected_spend"], whole["expected_spend"])
    assert whole["value_tier"].nunique() >= 4


def test_score_into_the_store_keeps_the_value_and_its_horizon(
    bundle: ModelBundle, sim: Path, tmp_path: Path
) -> None:
    store, out = tmp_path / "scores.db", tmp_path / "scores.csv"
    model = bundle.save(tmp_path / "model")
    args = ["score", "--events", str(sim / "events.parquet"), "--model", str(model)]
    result = CliRunner().invoke(
        app, [*args, "--as-of", AS_OF, "--out", str(out), "--store", str(store)]
    )
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype={"customer_id": str}).set_index("customer_id")
    engine = open_store(store)
    try:
        with engine.connect() as conn:
            page = queries.segment(conn, queries.SegmentFilter(), limit=10_000)
            assert bundle.value is not None
            assert page.run.value_horizon_days == bundle.value.horizon_days
            for item in page.items[:50]:
                assert item.value is not None and item.value.horizon_days == 120
                row = written.loc[item.customer_id]
                assert item.value.value_tier == row["value_tier"]
                assert item.value.expected_purchases == pytest.approx(row["expected_purchases"])
    finally:
        engine.dispose()


# -- persistence ------------------------------------------------------------------------


def test_round_trip_format_3_keeps_the_value_model_and_its_heads(
    learned_bundle: ModelBundle, saved: Path, events: pd.DataFrame
) -> None:
    doc = json.loads((saved / BUNDLE_FILE).read_text())
    assert doc["format_version"] == 3
    assert learned_bundle.value is not None
    assert doc["value"] == learned_bundle.value.to_dict()
    assert all((saved / f).exists() for f in VALUE_FILES.values())
    loaded = ModelBundle.load(saved)
    assert loaded.value == learned_bundle.value
    pd.testing.assert_frame_equal(
        loaded.predict_events(events, as_of=AS_OF),
        learned_bundle.predict_events(events, as_of=AS_OF),
    )


def test_saving_without_heads_removes_stale_head_files(
    bundle: ModelBundle, saved: Path, tmp_path: Path, events: pd.DataFrame
) -> None:
    again = Path(shutil.copytree(saved, tmp_path / "b"))
    bundle.save(again)
    assert not any((again / f).exists() for f in VALUE_FILES.values())
    loaded = ModelBundle.load(again)
    assert loaded.value == bundle.value and loaded.value_purchases_booster is None


def test_a_format_2_bundle_still_loads_without_a_value_model(
    saved: Path, tmp_path: Path, events: pd.DataFrame
) -> None:
    old = Path(shutil.copytree(saved, tmp_path / "old"))
    doc = json.loads((old / BUNDLE_FILE).read_text())
    doc["format_version"] = 2
    del doc["value"]
    for file in VALUE_FILES.values():
        (old / file).unlink()
    (old / BUNDLE_FILE).write_text(json.dumps(doc))
    loaded = ModelBundle.load(old)
    assert loaded.value is None
    assert loaded.value_outputs(np.zeros((1, len(loaded.feature_names))), None) is None
    scored = loaded.predict_events(events, as_of=AS_OF)
    assert not set(VALUE_COLUMNS) & set(scored.columns)
    assert list(scored.columns[1:]) == loaded.output_columns


def _edit_value(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads((path / BUNDLE_FILE).read_text())
        result = change(doc["value"])
        if result is not None:
            doc["value"] = result
        (path / BUNDLE_FILE).write_text(json.dumps(doc))

    return edit


def _edit_doc(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads((path / BUNDLE_FILE).read_text())
        change(doc)
        (path / BUNDLE_FILE).write_text(json.dumps(doc))

    return edit


def _write(file: str, text: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / file).write_text(text)

    return edit


def _cut(file: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        text = (path / file).read_text()
        (path / file).write_text(text[: len(text) // 2])

    return edit


def _copy_file(source: str, target: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        shutil.copy(path / source, path / target)

    return edit


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda v: v.__setitem__(key, value)


BROKEN = [
    pytest.param(
        _edit_value(lambda v: [1, 2]), "value: Input should be a valid dict", id="not a dict"
    ),
    pytest.param(_edit_value(lambda v: v.pop("tiers")), "exactly the keys", id="missing key"),
    pytest.param(_edit_value(lambda v: v.update(extra=1)), "exactly the keys", id="extra key"),
    pytest.param(_edit_value(lambda v: v["bgnbd"].update(r=-1.0)), "parameter r", id="negative r"),
    pytest.param(
        _edit_value(lambda v: v["gamma_gamma"].update(q="2")), "must be a number", id="string q"
    ),
    pytest.param(
        _edit_value(lambda v: v["tiers"].update(thresholds=[1, 2, 3, 4, 5])),
        "must not increase",
        id="rising thresholds",
    ),
    pytest.param(
        _edit_value(lambda v: v["never_buyer"].update(purchases=float("nan"))),
        "finite",
        id="NaN fill",
    ),
    pytest.param(
        _edit_value(lambda v: v["never_buyer"].update(spend=None)),
        "spend fill",
        id="no spend fill with amounts",
    ),
    pytest.param(_edit_value(_set("horizon_days", True)), "whole number", id="bool horizon"),
    pytest.param(_edit_value(_set("horizon_days", 0)), "horizon_days", id="zero horizon"),
    pytest.param(_edit_value(_set("heads", ["lifetime"])), "value heads", id="unknown head"),
    pytest.param(_edit_value(_set("heads", "purchases")), "list of names", id="heads not list"),
    pytest.param(
        _edit_doc(lambda d: d.update(format_version=2)), "cannot hold a value", id="format 2"
    ),
    pytest.param(_write(VALUE_FILES["spend"], "garbage\n\nmore"), "value_spend.txt", id="garbled"),
    pytest.param(_cut(VALUE_FILES["purchases"]), "value_purchases.txt", id="truncated"),
    pytest.param(_write(VALUE_FILES["purchases"], ""), "value_purchases.txt", id="empty head file"),
    pytest.param(
        lambda p: (p / VALUE_FILES["spend"]).unlink(), "value_spend.txt is missing", id="missing"
    ),
    pytest.param(
        _copy_file(STAGE_FILE, VALUE_FILES["spend"]), "outputs", id="multiclass as a head"
    ),
    pytest.param(_copy_file("churn_model.txt", VALUE_FILES["purchases"]), "objective", id="binary"),
]


@pytest.mark.parametrize(("edit", "message"), BROKEN)
def test_a_broken_value_section_or_head_is_refused_in_one_line(
    saved: Path, tmp_path: Path, edit: Callable[[Path], None], message: str
) -> None:
    broken = Path(shutil.copytree(saved, tmp_path / "broken"))
    edit(broken)
    with pytest.raises(ValueError) as info:
        ModelBundle.load(broken)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"model bundle {broken} is refused")
    assert message in text


def test_a_nan_literal_in_the_value_section_is_refused(saved: Path, tmp_path: Path) -> None:
    # Python's json reads the non-standard NaN literal: the value model must refuse it
    broken = Path(shutil.copytree(saved, tmp_path / "nan"))
    text = (broken / BUNDLE_FILE).read_text()
    doc = json.loads(text)
    doc["value"]["bgnbd"]["alpha"] = float("nan")
    (broken / BUNDLE_FILE).write_text(json.dumps(doc))  # writes NaN
    with pytest.raises(ValueError, match="alpha"):
        ModelBundle.load(broken)


def test_the_value_model_refuses_inconsistent_heads(
    features: pd.DataFrame, value: ValueModel
) -> None:
    stage, churn, purchases, _ = _heads(features)
    with pytest.raises(ValueError, match="purchases booster"):
        ModelBundle(
            load_definition(), STAGES, stage, churn, value=value, value_purchases_booster=purchases
        )
    no_amounts = dataclasses.replace(value, gamma_gamma=None, never_buyer_spend=math.nan)
    with pytest.raises(ValueError, match="spend head needs purchase amounts"):
        dataclasses.replace(no_amounts, heads=("spend",))
    tiers = TierThresholds(shares=(0.1,), thresholds=(1.0,))
    model = dataclasses.replace(no_amounts, tiers=tiers)
    assert ValueModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
