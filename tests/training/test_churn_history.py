"""Earlier snapshots of the labelled customers as extra rows of the churn head."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.taxonomy import load_taxonomy
from customer_lifecycle.scoring.pyfunc import bundle_of
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.labels import earlier_snapshots
from customer_lifecycle.training.train import (
    TrainConfig,
    build_examples,
    churn_history,
    train,
)
from mlflow import MlflowClient

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def test_earlier_snapshots_step_back_from_each_customers_first_label() -> None:
    keys = pd.DataFrame(
        {
            "customer_id": ["a", "b", "b"],
            "as_of": pd.to_datetime(["2024-12-31", "2024-12-31", "2024-06-30"], utc=True),
        }
    )
    out = earlier_snapshots(keys, count=2, step_days=90)
    got = {(c, t.date().isoformat()) for c, t in zip(out["customer_id"], out["as_of"], strict=True)}
    assert got == {
        ("a", "2024-10-02"),
        ("a", "2024-07-04"),
        # b's first label is in June: its earlier snapshots go back from there
        ("b", "2024-04-01"),
        ("b", "2024-01-02"),
    }
    assert str(out["as_of"].dtype) == "datetime64[ns, UTC]"
    assert earlier_snapshots(keys, count=0, step_days=90).empty
    with pytest.raises(ValueError, match="positive step"):
        earlier_snapshots(keys, count=1, step_days=0)


def test_history_rows_see_only_their_past_and_their_own_window() -> None:
    # one customer with events on days 1, 50 and 200, labelled on day 300; 90-day horizon:
    # earlier snapshots on days 210 (3 events before it, none in [210, 300): churned)
    # and 120 (2 before it, day 200 in [120, 210): active). Day 30's has 1 event before
    # it (day 50 in its window: active) and day -60's none (left out).
    days = [1, 50, 200, 320]
    events = pd.DataFrame(
        {
            "customer_id": "c1",
            "timestamp": [T0 + d * DAY for d in days],
            "event_type": "page_view",
        }
    )
    labels = pd.DataFrame(
        {"customer_id": ["c1"], "stage": ["consideration"], "as_of": [T0 + 300 * DAY]}
    )
    config = TrainConfig(churn_history=4, latent_states=False)
    definition = load_definition()
    examples, _ = build_examples(events, labels, load_taxonomy(), definition, config)
    history = churn_history(events, examples, None, definition, config)
    assert history is not None
    when = [(t - T0) // DAY for t in history.keys["as_of"]]
    assert when == [210, 120, 30]
    assert history.X["count_all_all"].tolist() == [3, 2, 1]
    assert history.churn.tolist() == [1, 0, 0]
    assert (history.stage == -1).all()
    assert list(history.X.columns) == list(examples.X.columns)
    # a step shorter than the horizon: windows overlap, and the latest ones reach into
    # the labelled snapshot's window (day 320 makes days 270 and 240 active)
    dense_config = TrainConfig(churn_history=4, churn_history_step_days=30)
    dense = churn_history(events, examples, None, definition, dense_config)
    assert dense is not None
    assert [(t - T0) // DAY for t in dense.keys["as_of"]] == [270, 240, 210, 180]
    assert dense.X["count_all_all"].tolist() == [3, 3, 3, 2]
    assert dense.churn.tolist() == [0, 0, 1, 0]
    assert churn_history(events, examples, None, definition, TrainConfig(churn_history=0)) is None


def test_churn_history_setting() -> None:
    assert TrainConfig(churn_history=3).churn_history_for(10**6) == 3
    assert TrainConfig(churn_history=0).churn_history_for(100) == 0
    # auto: 3 where labels are few, none where the rows would multiply the largest fits
    assert TrainConfig().churn_history_for(9_000) == 3
    assert TrainConfig().churn_history_for(200_000) == 0
    for bad in (-1, 13, "many", True, 2.5):
        with pytest.raises(ValueError, match="churn_history"):
            TrainConfig(churn_history=bad)  # type: ignore[arg-type]
    # the step: one horizon unless given
    assert TrainConfig().churn_history_step() == 90
    assert TrainConfig(horizon_days=10).churn_history_step() == 10
    assert TrainConfig(churn_history_step_days=7).churn_history_step() == 7
    for bad in (0, -5, 3651, "weekly", 1.5):
        with pytest.raises(ValueError, match="churn_history_step_days"):
            TrainConfig(churn_history_step_days=bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_history_feeds_the_churn_head_only(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "sim", customers=3_000, seed=5, as_of=["2024-12-31"])
    runs = {}
    for count in (0, 2):
        result = train(
            tmp_path / "sim" / "events.parquet",
            labels_path=tmp_path / "sim" / "labels.csv",
            config=TrainConfig(
                seed=4,
                max_rounds=60,
                cv_folds=2,
                latent_states=False,
                value=False,
                refit_worker="never",
                final_seeds=1,
                churn_history=count,
            ),
            say=lambda _: None,
        )
        runs[count] = (result, bundle_of(mlflow.pyfunc.load_model(result.model_uri)))
    (plain, plain_bundle), (more, more_bundle) = runs[0], runs[2]
    rows = more.summary["churn_history_rows"]
    labelled = more.summary["snapshots"]
    # up to two earlier snapshots per labelled customer, those before a first event left out
    assert plain.summary["churn_history_rows"] == 0
    assert labelled < rows <= 2 * labelled
    assert MlflowClient().get_run(more.run_id).data.params["churn_history_rows"] == str(rows)
    # the registered churn booster was fitted on the labelled and the earlier rows
    # (80% bagging), the stage booster on the labelled rows alone
    churn_tree = more_bundle.churn_booster.dump_model()["tree_info"][0]["tree_structure"]
    assert churn_tree["internal_count"] == pytest.approx(0.8 * (labelled + rows), rel=0.03)
    X = np.random.default_rng(0).normal(size=(300, len(plain_bundle.feature_names)))
    a, b = plain_bundle.predict_matrix(X), more_bundle.predict_matrix(X)
    assert np.array_equal(a["stage_proba"], b["stage_proba"])
    assert not np.allclose(a["churn_probability"], b["churn_probability"])
    # the validation rows are the same labelled customers either way
    assert more.metrics["valid_churn_roc_auc"] > 0.6
    assert plain.summary["validation_rows"] == more.summary["validation_rows"]
