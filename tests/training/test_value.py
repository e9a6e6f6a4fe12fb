"""The customer value model of a training run: baselines, held-out time, learned heads.

Simulated logs (``write_dataset``) and hand-made purchase-only logs drawn from the
BG/NBD process itself, so "sensible" can be checked against what happened.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.btyd import ValueModel, tier_thresholds
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.scoring.pyfunc import bundle_of
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.train import TrainConfig, train
from customer_lifecycle.training.value import (
    HELD_OUT_SHARE,
    MIN_EVAL_DAYS,
    ValueFit,
    eval_horizon,
    evaluate_value,
    fit_value,
    head_is_kept,
)
from customer_lifecycle.training.value_metrics import future_value
from mlflow import MlflowClient
from typer.testing import CliRunner

from customer_lifecycle.cli import app

AS_OF = "2024-12-31"
DEFINITION = load_definition()
BTYD = ("btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_mean_spend")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("value-sim")
    write_dataset(out, customers=3000, seed=7, as_of=[AS_OF])
    return out


@pytest.fixture(scope="module")
def events(sim: Path) -> pd.DataFrame:
    return load_events(sim / "events.parquet")[0]


@pytest.fixture(scope="module")
def fit90(events: pd.DataFrame) -> tuple[ValueFit, list[str]]:
    lines: list[str] = []
    fit = fit_value(events, AS_OF, definition=DEFINITION, horizon_days=90, say=lines.append)
    assert fit is not None
    return fit, lines


def _served(fit: ValueFit, features: pd.DataFrame) -> dict[str, np.ndarray]:
    X = features[DEFINITION.feature_names()].to_numpy(dtype=np.float64)
    learned = {
        f"learned_{h}": np.exp(b.predict(X, raw_score=True)) for h, b in fit.boosters.items()
    }
    return fit.model.predict(*(features[c] for c in BTYD), **learned)


# -- the decision rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("learned", "kept"),
    [
        ({"rmse": 1.0, "mae": 0.5}, True),
        ({"rmse": 1.0, "mae": 0.7}, False),  # lower RMSE only
        ({"rmse": 1.3, "mae": 0.5}, False),  # lower MAE only
        ({"rmse": 1.2, "mae": 0.6}, False),  # a tie keeps the baseline
        ({"rmse": math.nan, "mae": 0.1}, False),
    ],
)
def test_a_head_is_kept_only_when_lower_on_both_metrics(
    learned: dict[str, float], kept: bool
) -> None:
    decision, reason = head_is_kept(learned, {"rmse": 1.2, "mae": 0.6})
    assert decision is kept
    assert reason


def test_the_evaluation_horizon_shrinks_with_a_short_history() -> None:
    assert eval_horizon(1000, 365) == 365
    assert eval_horizon(1.5 * 365, 365) == 365
    assert eval_horizon(365, 365) == 182  # half the history
    assert eval_horizon(2 * MIN_EVAL_DAYS, 365) == MIN_EVAL_DAYS
    assert eval_horizon(2 * MIN_EVAL_DAYS - 1, 365) is None


# -- a simulated log --------------------------------------------------------------------


def test_one_run_keeps_a_head_exactly_when_it_beats_the_baseline(
    fit90: tuple[ValueFit, list[str]],
) -> None:
    fit, lines = fit90
    m = fit.metrics
    assert fit.params["value_eval_horizon_days"] == "90"
    for head in ("purchases", "spend"):
        learned = {k: m[f"value_learned_{head}_{k}"] for k in ("rmse", "mae")}
        baseline = {k: m[f"value_bgnbd_{head}_{k}"] for k in ("rmse", "mae")}
        beats = learned["rmse"] < baseline["rmse"] and learned["mae"] < baseline["mae"]
        assert (head in fit.model.heads) is beats
        assert (head in fit.boosters) is beats
        served = learned if beats else baseline
        assert m[f"value_model_{head}_rmse"] == pytest.approx(served["rmse"])
        assert any(f"learned {head} head {'kept' if beats else 'not kept'}" in x for x in lines)
    expected = "learned:" + ",".join(fit.model.heads) if fit.model.heads else "baseline"
    assert fit.params["value_heads"] == expected


def test_never_buyers_get_the_fill_measured_at_the_cutoff(
    fit90: tuple[ValueFit, list[str]], events: pd.DataFrame
) -> None:
    fit, _ = fit90
    cutoff = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(days=90)
    feats = build_features(events, as_of=cutoff)
    never = feats["btyd_age_days"].isna().to_numpy()
    actual = future_value(events, cutoff, 90, customers=feats.index)
    assert fit.model.never_buyer_purchases == pytest.approx(actual["purchases"][never].mean())
    assert fit.model.never_buyer_spend == pytest.approx(actual["spend"][never].mean())
    assert fit.model.never_buyer_purchases > 0


def test_tiers_are_set_on_the_served_spend_of_every_customer(
    fit90: tuple[ValueFit, list[str]], events: pd.DataFrame
) -> None:
    fit, _ = fit90
    now = build_features(events, as_of=AS_OF)
    served = _served(fit, now)
    shares = fit.model.tiers.shares
    assert fit.model.tiers == tier_thresholds(served["expected_spend"], shares, ties="lower")
    assert fit.model.tier_by == "expected_spend"
    assert np.mean(served["value_tier"] == "top_1") == pytest.approx(0.01, abs=0.005)
    # the never-buyers' shared fill (most of this population) lifts no tier past its share
    labels = fit.model.tiers.labels
    never = now["btyd_age_days"].isna().to_numpy()
    assert never.mean() > 0.3
    for i, share in enumerate(shares):
        assert np.isin(served["value_tier"], labels[: i + 1]).mean() <= share


def test_metrics_cover_baseline_and_model_with_plots(fit90: tuple[ValueFit, list[str]]) -> None:
    fit, _ = fit90
    for who in ("bgnbd", "model"):
        for metric in (
            "purchases_mae",
            "purchases_rmse",
            "spend_mae",
            "spend_rmse",
            "purchases_spearman",
            "spend_top_decile_share",
            "purchases_calibration_ratio",
            "next_days_mae",
        ):
            assert math.isfinite(fit.metrics[f"value_{who}_{metric}"]), (who, metric)
        assert f"plots/value/{who}_gains.png" in fit.figures
        assert f"plots/value/{who}_predicted_vs_actual.png" in fit.figures
    assert fit.metrics["value_eval_customers"] == pytest.approx(HELD_OUT_SHARE * 3000, abs=300)
    # BG/NBD ranks the held-out customers' future purchases better than chance
    assert fit.metrics["value_bgnbd_purchases_spearman"] > 0.2


def test_a_year_of_history_is_evaluated_at_half_a_year(events: pd.DataFrame) -> None:
    lines: list[str] = []
    fit = fit_value(events, AS_OF, definition=DEFINITION, horizon_days=365, say=lines.append)
    assert fit is not None
    assert fit.params["value_eval_horizon_days"] == "182"
    assert fit.model.heads == () and fit.params["value_heads"] == "baseline"
    assert any("evaluated at 182 days" in x for x in lines)
    assert any("learned heads: not tried" in x for x in lines)
    # the fill is measured over the 182-day window and scaled to the 365-day horizon
    cutoff = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(days=182)
    feats = build_features(events, as_of=cutoff)
    never = feats["btyd_age_days"].isna().to_numpy()
    actual = future_value(events, cutoff, 182, customers=feats.index)
    assert fit.model.never_buyer_purchases == pytest.approx(
        actual["purchases"][never].mean() * 365 / 182
    )


def test_events_after_the_cutoff_never_change_held_out_predictions(
    events: pd.DataFrame,
) -> None:
    def run(ev: pd.DataFrame):  # type: ignore[no-untyped-def]
        return evaluate_value(
            ev, AS_OF, horizon_days=90, eval_days=90, definition=DEFINITION, amounts=True
        )

    before = run(events)
    held = set(before.customers[before.held_out])
    cutoff = before.cutoff
    late = events["timestamp"] >= cutoff
    # the held-out customers' future is erased and replaced by a burst of purchases
    mine = events["customer_id"].astype(str).isin(held)
    burst = events[mine & late].assign(event_type="purchase", amount=999.0)
    changed = pd.concat([events[~(mine & late)], burst], ignore_index=True)
    after = run(changed)
    assert (after.actual["spend"] != before.actual["spend"]).any()  # the outcomes did change
    for key in ("expected_purchases", "expected_spend", "days_to_next_purchase"):
        np.testing.assert_array_equal(
            after.baseline[key][after.held_out], before.baseline[key][before.held_out]
        )
        np.testing.assert_array_equal(
            after.served[key][after.held_out], before.served[key][before.held_out]
        )
    # and for everyone who bought: dropping every later event leaves BG/NBD's part alone
    cut = run(events[~late])
    buyer = ~np.isnan(before.baseline["days_to_next_purchase"])
    np.testing.assert_array_equal(
        cut.baseline["expected_purchases"][buyer], before.baseline["expected_purchases"][buyer]
    )


def test_a_log_without_amounts_gives_nan_spend_and_tiers_by_purchases(
    events: pd.DataFrame,
) -> None:
    lines: list[str] = []
    fit = fit_value(
        events.drop(columns="amount"),
        AS_OF,
        definition=DEFINITION,
        horizon_days=90,
        say=lines.append,
    )
    assert fit is not None
    model = fit.model
    assert model.gamma_gamma is None and "spend" not in model.heads
    assert math.isnan(model.never_buyer_spend)
    assert model.tier_by == "expected_purchases"
    assert fit.params["value_tier_by"] == "expected_purchases"
    assert any("no purchase amounts" in x for x in lines)
    served = _served(fit, build_features(events.drop(columns="amount"), as_of=AS_OF))
    assert np.isnan(served["expected_spend"]).all()
    assert model.tiers == tier_thresholds(
        served["expected_purchases"], model.tiers.shares, ties="lower"
    )
    assert set(served["value_tier"]) >= {"top_1", "rest"}
    assert ValueModel.from_dict(model.to_dict()) == model


# -- purchase-only logs -----------------------------------------------------------------


def bgnbd_log(customers: int, seed: int, days: int = 730) -> pd.DataFrame:
    """Only ``purchase`` events, drawn from the BG/NBD process, with amounts."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-01-01", tz="UTC")
    rows: list[tuple[str, float, float]] = []
    for c in range(customers):
        t = rng.uniform(0, days * 0.6)
        rate = rng.gamma(0.9, 1 / 25.0)  # purchases per day while active
        p_drop = rng.beta(1.0, 4.0)
        mean_spend = rng.gamma(4.0, 15.0)
        rows.append((f"p{c:05d}", t, rng.gamma(6.0, mean_spend / 6.0)))
        while True:
            t += rng.exponential(1 / rate)
            if t >= days:
                break
            rows.append((f"p{c:05d}", t, rng.gamma(6.0, mean_spend / 6.0)))
            if rng.random() < p_drop:  # dropout only right after a repeat purchase
                break
    ids, t, amount = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "timestamp": start + pd.to_timedelta(np.asarray(t), unit="D"),
            "event_type": "purchase",
            "amount": amount,
        }
    )


def test_a_purchase_only_log_gives_sensible_value() -> None:
    events = bgnbd_log(2500, seed=1)
    as_of = "2024-12-31"  # 730 days after the start: a full 180-day window is held out
    lines: list[str] = []
    fit = fit_value(events, as_of, definition=DEFINITION, horizon_days=180, say=lines.append)
    assert fit is not None
    m = fit.metrics
    assert fit.params["value_eval_horizon_days"] == "180"
    # drawn from BG/NBD itself: the baseline ranks and calibrates the held-out future
    assert m["value_bgnbd_purchases_spearman"] > 0.5
    assert 0.8 < m["value_bgnbd_purchases_calibration_ratio"] < 1.25
    assert m["value_model_spend_top_decile_share"] > 0.3
    # every customer has bought: the fill stands in from the single-purchase customers
    assert any("single-purchase customers" in x for x in lines)
    served = _served(fit, build_features(events, as_of=as_of))
    assert np.isfinite(served["expected_spend"]).all()
    assert "unknown" not in set(served["value_tier"])


# -- whole training runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.chdir(root)
    yield root
    mp.undo()


QUICK = {"latent_states": False, "cv_folds": 2, "max_rounds": 60, "seed": 1}


@pytest.mark.slow
def test_a_run_logs_value_metrics_params_plots_and_serves_the_value(
    store: Path, sim: Path, events: pd.DataFrame
) -> None:
    result = train(
        sim / "events.parquet",
        labels_path=sim / "labels.csv",
        config=TrainConfig(**QUICK, value_horizon_days=90, value_tiers=(0.02, 0.2)),
        register="value-test",
        say=lambda _: None,
    )
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["value_horizon_days"] == "90"
    assert run.data.params["value_eval_horizon_days"] == "90"
    assert run.data.params["value_heads"] in {
        "baseline",
        "learned:purchases",
        "learned:spend",
        "learned:purchases,spend",
    }
    for key in ("value_bgnbd_purchases_rmse", "value_model_spend_mae", "value_bgnbd_next_days_mae"):
        assert key in run.data.metrics, key
    plots = {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots/value")}
    assert "plots/value/bgnbd_gains.png" in plots and "plots/value/model_gains.png" in plots
    bundle = bundle_of(mlflow.pyfunc.load_model(result.model_uri))
    assert bundle.value is not None and bundle.value.tiers.shares == (0.02, 0.2)
    assert run.data.params["value_heads"] == (
        "learned:" + ",".join(bundle.value.heads) if bundle.value.heads else "baseline"
    )
    scored = bundle.predict_events(events, as_of=AS_OF)
    assert set(scored["value_tier"]) == {"top_2", "top_20", "rest"}


@pytest.mark.slow
def test_a_log_without_purchases_trains_without_a_value_model(
    store: Path, sim: Path, events: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "no-purchases.parquet"
    events[events["event_type"] != "purchase"].to_parquet(path)
    lines: list[str] = []
    result = train(
        path, labels_path=sim / "labels.csv", config=TrainConfig(**QUICK), say=lines.append
    )
    assert any("no purchase events" in x for x in lines)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["value_heads"] == "none"
    assert not [k for k in run.data.metrics if k.startswith("value_")]
    bundle = bundle_of(mlflow.pyfunc.load_model(result.model_uri))
    assert bundle.value is None
    assert "value_tier" not in bundle.output_columns


@pytest.mark.parametrize(
    ("option", "value", "span"),
    [
        ("--churn-history", "some", "from 0 to 12"),  # not a number
        ("--churn-history", "13", "from 0 to 12"),  # beyond 12
        ("--churn-history-step-days", "monthly", "from 1 to 3650"),  # not a number
        ("--churn-history-step-days", "0", "from 1 to 3650"),  # no step at all
    ],
)
def test_the_cli_refuses_bad_churn_history_in_one_line(
    sim: Path, option: str, value: str, span: str
) -> None:
    args = ["train", "--events", str(sim / "events.parquet"), "--labels", str(sim / "labels.csv")]
    result = CliRunner().invoke(app, [*args, option, value])
    assert result.exit_code == 2
    assert "churn_history" in result.output.replace("-", "_")
    assert f"whole number {span}" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "folds",
    [
        "three",  # not a number
        "0.5",  # not a whole number
        "11",  # beyond 10
    ],
)
def test_the_cli_refuses_bad_cv_folds_in_one_line(sim: Path, folds: str) -> None:
    args = ["train", "--events", str(sim / "events.parquet"), "--labels", str(sim / "labels.csv")]
    result = CliRunner().invoke(app, [*args, "--cv-folds", folds])
    assert result.exit_code == 2
    assert "cv" in result.output and "whole number from 1 to 10" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("tiers", "message"),
    [("1,x", "comma-separated percentages"), ("50,10", "strictly increasing")],
)
def test_the_cli_refuses_bad_value_tiers_in_one_line(sim: Path, tiers: str, message: str) -> None:
    args = ["train", "--events", str(sim / "events.parquet"), "--labels", str(sim / "labels.csv")]
    result = CliRunner().invoke(app, [*args, "--value-tiers", tiers])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
