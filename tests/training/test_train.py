"""End-to-end training into a real SQLite-backed MLflow store, and the trained model's behaviour."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.taxonomy import load_taxonomy
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.scoring.pyfunc import bundle_of
from customer_lifecycle.simulator import dataset_oracle, write_dataset
from customer_lifecycle.training.labels import check_horizon, churn_labels, load_labels
from customer_lifecycle.training.train import (
    Examples,
    TrainConfig,
    build_examples,
    oracle_metrics,
    train,
)
from mlflow import MlflowClient
from typer.testing import CliRunner

from customer_lifecycle.cli import app

AS_OF = ["2024-09-30", "2024-12-31"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SQLite tracking store; MLFLOW_TRACKING_URI points at it for this module."""
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.chdir(root)  # artifacts of the default experiment land here, not in the repo
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    write_dataset(out, customers=10_000, seed=11, as_of=AS_OF)
    return out


@pytest.fixture(scope="module")
def trained(store: Path, sim: Path):  # type: ignore[no-untyped-def]
    result = train(
        sim / "events.parquet",
        labels_path=sim / "labels.csv",
        config=TrainConfig(seed=1, refit_worker="always"),  # the final fits in a worker
        register="lifecycle-test",
        promote_if_better=True,
        oracle_predictions=dataset_oracle(sim / "events.parquet"),
        say=lambda _: None,
    )
    bundle = bundle_of(mlflow.pyfunc.load_model("models:/lifecycle-test@champion"))
    return result, bundle


@pytest.fixture(scope="module")
def events(sim: Path) -> pd.DataFrame:
    return load_events(sim / "events.parquet")[0]


def test_run_is_tracked_with_params_metrics_plots_and_model(store: Path, trained) -> None:  # type: ignore[no-untyped-def]
    result, _ = trained
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["config.horizon_days"] == "90"
    assert run.data.params["split"] == "time+customer"
    for key in (
        "valid_stage_macro_f1",
        "valid_stage_f1_advocacy",
        "valid_churn_roc_auc",
        "valid_churn_ece",
        "valid_churn_lift_top_decile",
        "baseline_majority_stage_macro_f1",
        "baseline_rulebook_stage_macro_f1",
        "baseline_recency_churn_roc_auc",
        "baseline_rfm_logistic_churn_roc_auc",
        "baseline_bgnbd_churn_roc_auc",
        "oracle_stage_macro_f1",
        "ratio_stage_macro_f1_to_oracle",
    ):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots")}
    assert "plots/stage_confusion_matrix.png" in artifacts
    assert "plots/churn_roc_pr.png" in artifacts
    # the value model: a year of simulated history is evaluated on its last half year
    params = run.data.params
    assert params["value_horizon_days"] == "365"
    assert params["value_eval_horizon_days"] == "182"
    assert params["value_heads"] == "baseline"  # no head is tried at another horizon
    for who in ("bgnbd", "model"):
        for metric in ("purchases_mae", "spend_rmse", "spend_top_decile_share", "next_days_mae"):
            assert f"value_{who}_{metric}" in run.data.metrics, (who, metric)
    value_plots = {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots/value")}
    assert {"plots/value/bgnbd_gains.png", "plots/value/model_predicted_vs_actual.png"} <= (
        value_plots
    )
    assert result.model_uri == "models:/lifecycle-test/1"
    assert result.promoted


def test_registered_model_saw_every_row_validation_model_only_the_fit_set(
    store: Path, trained
) -> None:  # type: ignore[no-untyped-def]
    result, bundle = trained
    training = bundle.metadata["training"]
    assert training["final_fit_rows"] == result.summary["snapshots"]
    # two snapshots: the fit set is the earlier snapshot's non-validation customers, so
    # fit and validation together are far from every row
    assert training["fit_rows"] + training["validation_rows"] < 0.7 * training["final_fit_rows"]
    assert training["folds"] == 5
    # the registered boosters ran exactly the recorded rounds on every row (80% bagging),
    # three seeds of each averaged into one model up to 25,000 fit rows
    assert training["final_seeds"] == 3
    assert bundle.stage_booster.num_trees() == training["rounds_stage"] * len(bundle.stages) * 3
    assert bundle.churn_booster.num_trees() == training["rounds_churn"] * 3
    # the churn booster also saw the earlier snapshots of every labelled customer
    assert 0 < training["churn_history_rows"] <= 3 * training["final_fit_rows"]
    churn_rows = training["final_fit_rows"] + training["churn_history_rows"]
    tree = bundle.churn_booster.dump_model()["tree_info"][0]["tree_structure"]
    assert tree["internal_count"] == pytest.approx(0.8 * churn_rows, rel=0.03)
    tree = bundle.stage_booster.dump_model()["tree_info"][0]["tree_structure"]
    assert tree["internal_count"] == pytest.approx(0.8 * training["final_fit_rows"], rel=0.03)
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["final_fit_rows"] == str(training["final_fit_rows"])
    assert params["folds"] == "5"
    assert {"rounds_stage", "rounds_churn", "fit_rows"} <= set(params)
    assert params["final_seeds"] == "3"
    assert "config.calibration_fraction" not in params


def test_model_beats_its_baselines(trained) -> None:  # type: ignore[no-untyped-def]
    m = trained[0].metrics
    assert m["valid_stage_macro_f1"] > m["baseline_majority_stage_macro_f1"]
    assert m["valid_stage_macro_f1"] > m["baseline_rulebook_stage_macro_f1"]
    assert m["valid_churn_roc_auc"] >= m["baseline_recency_churn_roc_auc"] - 0.01
    assert m["valid_stage_macro_f1"] <= m["oracle_stage_macro_f1"] + 0.05


def test_pyfunc_round_trip_reproduces_scores(trained, events: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    result, bundle = trained
    feats = bundle.build_features(events, as_of="2024-12-31")
    direct = bundle.predict_features(feats)
    loaded = mlflow.pyfunc.load_model(result.model_uri)
    via_mlflow = loaded.predict(feats.reset_index())
    pd.testing.assert_frame_equal(
        via_mlflow.reset_index(drop=True), direct.reset_index(drop=True), check_dtype=False
    )
    # without the features' as_of there is no date; with it (an inference parameter) the
    # pyfunc dates the next purchase as the bundle does
    assert via_mlflow["next_purchase_date"].isna().all()
    dated = loaded.predict(feats.reset_index(), params={"as_of": "2024-12-31"})
    expected = bundle.predict_features(feats, as_of="2024-12-31")
    assert expected["next_purchase_date"].notna().any()
    pd.testing.assert_frame_equal(
        dated.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False
    )


def test_bundle_directory_round_trip(trained, tmp_path: Path, events: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, bundle = trained
    again = ModelBundle.load(bundle.save(tmp_path / "b"))
    a = bundle.predict_events(events, as_of="2024-12-31")
    b = again.predict_events(events, as_of="2024-12-31")
    pd.testing.assert_frame_equal(a, b)
    assert not list((tmp_path / "b").glob("*.pkl"))


def test_second_version_is_promoted_only_if_better(store: Path, sim: Path, trained) -> None:  # type: ignore[no-untyped-def]
    # a model trained with a one-round budget cannot beat the champion on the same data
    weak = train(
        sim / "events.parquet",
        labels_path=sim / "labels.csv",
        # neither the latent model nor cross-fitting is under test here: the cheapest run
        config=TrainConfig(seed=1, max_rounds=1, cv_folds=2, latent_states=False, churn_history=0),
        register="lifecycle-test",
        promote_if_better=True,
        say=lambda _: None,
    )
    assert weak.registered_version == "2"
    assert not weak.promoted
    alias = MlflowClient().get_model_version_by_alias("lifecycle-test", "champion")
    assert str(alias.version) == "1"


def test_training_alone_logs_no_oracle(store: Path, sim: Path) -> None:
    # the simulator's files lie beside the events, but training never reads them
    m = train(
        sim / "events.parquet",
        labels_path=sim / "labels.csv",
        config=TrainConfig(seed=1, max_rounds=1, cv_folds=2, latent_states=False, churn_history=0),
        say=lambda _: None,
    ).metrics
    assert "valid_stage_macro_f1" in m
    assert not [k for k in m if "oracle" in k]


def test_final_fits_in_a_worker_are_the_ones_fitted_here(
    store: Path, sim: Path, tmp_path: Path
) -> None:
    # the same run with the final boosters fitted in a second process and here: the
    # registered model must not depend on where it was fitted (two seeds each, averaged)
    labels = tmp_path / "labels.csv"
    pd.read_csv(sim / "labels.csv").head(4_000).to_csv(labels, index=False)
    said: list[str] = []
    bundles = []
    for mode in ("always", "never"):
        result = train(
            sim / "events.parquet",
            labels_path=labels,
            config=TrainConfig(
                seed=2,
                max_rounds=40,
                cv_folds=2,
                latent_states=False,
                value=False,
                refit_worker=mode,
                final_seeds=2,
            ),
            say=said.append,
        )
        bundles.append(bundle_of(mlflow.pyfunc.load_model(result.model_uri)))
    assert any("worker process" in line for line in said)
    assert not [line for line in said if line.startswith("warning")]
    X = np.random.default_rng(0).normal(size=(500, len(bundles[0].feature_names)))
    worker, here = (b.predict_matrix(X) for b in bundles)
    assert np.array_equal(worker["stage_proba"], here["stage_proba"])
    assert np.array_equal(worker["churn_probability"], here["churn_probability"])


def test_cli_train_on_simulated_data_logs_the_oracle(store: Path, sim: Path) -> None:
    # the command line is where the simulator's oracle meets training
    args = ["train", "--events", str(sim / "events.parquet"), "--labels", str(sim / "labels.csv")]
    # folds and churn history are not under test here: the cheaper run
    cheap = ["--cv-folds", "2", "--churn-history", "0"]
    result = CliRunner().invoke(app, [*args, "--experiment", "cli-oracle", *cheap])
    assert result.exit_code == 0, result.output
    assert "oracle:     stage macro-F1" in result.stdout
    run_id = result.stdout.split("run id: ")[1].split()[0]
    assert MlflowClient().get_run(run_id).data.params["folds"] == "2"
    logged = MlflowClient().get_run(run_id).data.metrics
    assert logged["oracle_coverage"] == 1.0
    assert {"oracle_stage_macro_f1", "oracle_churn_roc_auc", "gap_churn_roc_auc_to_oracle"} <= set(
        logged
    )


# -- behaviour --------------------------------------------------------------------------


def test_renaming_a_customer_changes_nothing(trained, events: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, bundle = trained
    before = bundle.predict_events(events, as_of="2024-12-31").set_index("customer_id")
    renamed = events.assign(
        customer_id=events["customer_id"].astype(str).replace({"c0000001": "zz-renamed"})
    )
    after = bundle.predict_events(renamed, as_of="2024-12-31").set_index("customer_id")
    after = after.rename(index={"zz-renamed": "c0000001"}).loc[before.index]
    pd.testing.assert_frame_equal(before, after)


def test_recent_activity_never_raises_churn_risk_much(trained, events: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, bundle = trained
    as_of = pd.Timestamp("2024-12-31", tz="UTC")
    before = bundle.predict_events(events, as_of=as_of).set_index("customer_id")
    ids = before.index[:500]
    recent = pd.DataFrame(
        {
            "customer_id": ids,
            "timestamp": as_of - pd.Timedelta(hours=12),
            "event_type": "page_view",
            "amount": np.nan,
        }
    )
    more = pd.concat([events.astype({"customer_id": str, "event_type": str}), recent])
    after = bundle.predict_events(more, as_of=as_of).set_index("customer_id").loc[ids]
    rise = after["churn_probability"] - before.loc[ids, "churn_probability"]
    # the head is monotone in overall activity; anchored and per-group features are
    # free, so a small rise is tolerated, a systematic one is not
    assert np.quantile(rise, 0.99) <= 0.02, rise.describe()
    assert rise.max() <= 0.10, rise.sort_values().tail()
    assert after["churn_probability"].mean() < before.loc[ids, "churn_probability"].mean() - 0.05


def test_an_obvious_advocate_is_called_one(trained) -> None:  # type: ignore[no-untyped-def]
    _, bundle = trained
    as_of = pd.Timestamp("2024-12-31", tz="UTC")
    days = np.arange(2, 120, 3)
    kinds = ["purchase", "review", "referral", "social_share", "login", "page_view"]
    rows = [
        ("fan", as_of - pd.Timedelta(days=int(d)), kinds[i % len(kinds)], 50.0)
        for i, d in enumerate(days)
    ]
    rows.append(("fan", as_of - pd.Timedelta(days=150), "ad_click", np.nan))
    fan = pd.DataFrame(rows, columns=["customer_id", "timestamp", "event_type", "amount"])
    scored = bundle.predict_events(fan.sort_values("timestamp"), as_of=as_of)
    assert scored.loc[0, "stage"] == "advocacy", scored.T


# -- leakage ----------------------------------------------------------------------------


def test_events_after_as_of_cannot_change_a_prediction(trained, events: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, bundle = trained
    as_of = pd.Timestamp("2024-09-30", tz="UTC")
    before = events[events["timestamp"] < as_of]
    assert len(before) < len(events)
    pd.testing.assert_frame_equal(
        bundle.predict_events(events, as_of=as_of), bundle.predict_events(before, as_of=as_of)
    )


def test_a_labels_own_window_never_feeds_its_features(sim: Path, events: pd.DataFrame) -> None:
    labels = load_labels(sim / "labels.csv", taxonomy=load_taxonomy())
    first = labels[labels["as_of"] == labels["as_of"].min()].head(300)
    config = TrainConfig()
    from customer_lifecycle.features.definition import load_definition

    d = load_definition()
    ex, _ = build_examples(events, first, load_taxonomy(), d, config)
    # wipe every event in the churn windows: features stay, churn labels flip to 1
    start = first["as_of"].min()
    end = start + pd.Timedelta(days=config.horizon_days)
    inside = (events["timestamp"] >= start) & (events["timestamp"] < end)
    wiped, _ = build_examples(events[~inside], first, load_taxonomy(), d, config)
    pd.testing.assert_frame_equal(ex.X, wiped.X)
    assert wiped.churn.all() and not ex.churn.all()


# -- bad input --------------------------------------------------------------------------


def test_unknown_stage_name_is_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("customer_id,stage,as_of\na,awareness,2024-01-01\nb,loyal-ish,2024-01-01\n")
    with pytest.raises(ValueError, match=r"row 2: unknown stage 'loyal-ish'"):
        load_labels(path, taxonomy=load_taxonomy())


def test_stage_synonyms_are_mapped(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("customer_id,stage\na,Loyalty\nb,interest\n")
    labels = load_labels(path, taxonomy=load_taxonomy(), as_of="2024-01-01")
    assert list(labels["stage"]) == ["advocacy", "consideration"]


def test_labels_for_unknown_customers_are_a_clear_message(
    store: Path, sim: Path, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        "customer_id,stage,as_of\nnobody,awareness,2024-12-31\nghost,retention,2024-12-31\n"
    )
    with pytest.raises(ValueError, match="no labelled customer has events before its as_of"):
        train(sim / "events.parquet", labels_path=path, say=lambda _: None)


def test_horizon_past_the_data_is_refused(events: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="horizon runs past the data"):
        check_horizon(events, pd.Series([pd.Timestamp("2025-02-01", tz="UTC")]), 90)


def test_churn_label_counts_only_its_window(events: pd.DataFrame) -> None:
    from customer_lifecycle.features.definition import load_definition

    snaps = pd.DataFrame({"customer_id": ["c0000005"], "as_of": ["2024-09-30"]})
    ts = events.loc[events["customer_id"] == "c0000005", "timestamp"]
    start = pd.Timestamp("2024-09-30", tz="UTC")
    expected = int(not ((ts >= start) & (ts < start + pd.Timedelta(days=90))).any())
    got = churn_labels(events, snaps, horizon_days=90, definition=load_definition())
    assert got[0] == expected


# -- oracle predictions -----------------------------------------------------------------

STAGES = list(load_taxonomy().stages)


def _validation(n: int = 40) -> Examples:
    """``n`` examples at one snapshot, every stage present, every other customer churned."""
    keys = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "as_of": pd.Timestamp("2024-12-31", tz="UTC"),
        }
    )
    stage = np.arange(n) % len(STAGES)
    return Examples(keys, pd.DataFrame(index=range(n)), stage, np.arange(n) % 2)


def _perfect(ex: Examples) -> pd.DataFrame:
    """Predictions that put all mass on the truth, with the as_of as an ISO string."""
    proba = np.eye(len(STAGES))[ex.stage]
    frame = pd.DataFrame(proba, columns=[f"p_{s}" for s in STAGES])
    frame.insert(0, "as_of", "2024-12-31T00:00:00+00:00")
    frame.insert(0, "customer_id", ex.keys["customer_id"])
    return frame.assign(churn_probability=ex.churn.astype(float))


def test_a_perfect_oracle_scores_perfectly() -> None:
    ex = _validation()
    got = oracle_metrics(_perfect(ex), ex, load_taxonomy(), say=lambda _: None)
    assert got["oracle_coverage"] == 1.0
    assert got["oracle_stage_macro_f1"] == 1.0
    assert got["oracle_churn_roc_auc"] == 1.0


def test_oracle_rows_are_matched_by_customer_and_time() -> None:
    ex = _validation()
    frame = _perfect(ex)
    # shuffled rows, a quarter missing, and one row at another snapshot time
    frame = frame.sample(frac=1.0, random_state=0).iloc[10:].reset_index(drop=True)
    frame.loc[0, "as_of"] = "2024-09-30"
    got = oracle_metrics(frame, ex, load_taxonomy(), say=lambda _: None)
    assert got["oracle_coverage"] == pytest.approx(29 / 40)
    assert got["oracle_stage_accuracy"] == 1.0


def test_oracle_with_churn_only_scores_churn_only() -> None:
    ex = _validation()
    frame = _perfect(ex)[["customer_id", "as_of", "churn_probability"]]
    got = oracle_metrics(frame, ex, load_taxonomy(), say=lambda _: None)
    assert "oracle_churn_roc_auc" in got
    assert not [k for k in got if k.startswith("oracle_stage")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="as_of"), "no 'as_of' column"),  # no key
        (lambda f: pd.concat([f, f.head(1)]), "repeat"),  # a key twice
        (lambda f: f[["customer_id", "as_of", "p_awareness"]], "p_<stage>"),  # nothing usable
    ],
)
def test_bad_oracle_predictions_are_refused(change, message) -> None:  # type: ignore[no-untyped-def]
    ex = _validation()
    with pytest.raises(ValueError, match=message):
        oracle_metrics(change(_perfect(ex)), ex, load_taxonomy(), say=lambda _: None)
