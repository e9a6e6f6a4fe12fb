"""Held-out value evaluation: future_value's window and unit, value_metrics, value_plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.training.value_metrics import future_value, value_metrics, value_plots
from matplotlib.figure import Figure

AS_OF = "2024-03-01T00:00:00Z"


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [(r[0], r[1], r[2], r[3] if len(r) > 3 else np.nan) for r in rows],
        columns=["customer_id", "timestamp", "event_type", "amount"],
    )


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return frame(
        [
            # a: bought before; in the window two purchases on one day, one on another
            ("a", "2024-01-10T10:00:00Z", "purchase", 999.0),  # before as_of: not counted
            ("a", "2024-03-01T00:00:00Z", "purchase", 10.0),  # exactly at as_of: counted
            ("a", "2024-03-01T20:00:00Z", "purchase", 5.0),  # same UTC day
            ("a", "2024-03-04T12:00:00Z", "purchase"),  # no amount: a purchase day of 0
            ("a", "2024-03-05T00:00:00Z", "refund", 8.0),  # refunds are not purchases
            ("a", "2024-03-31T00:00:00Z", "purchase", 70.0),  # at as_of + 30 d: outside
            # b: browsed before, bought nothing in the window
            ("b", "2024-02-20T00:00:00Z", "page_view"),
            ("b", "2024-03-02T00:00:00Z", "add_to_cart"),
            # c: only events in the window: not in the evaluated population
            ("c", "2024-03-02T00:00:00Z", "purchase", 50.0),
        ]
    )


def test_future_value_counts_purchase_days_in_the_window(log: pd.DataFrame) -> None:
    out = future_value(log, AS_OF, 30)
    assert list(out.index) == ["a", "b"]
    assert out.index.name == "customer_id"
    assert out.loc["a", "purchases"] == 2  # Mar 1 (two events) and Mar 4
    assert out.loc["a", "spend"] == 15.0
    assert out.loc["a", "days_to_next_purchase"] == 0.0
    assert (out.loc["b", "purchases"], out.loc["b", "spend"]) == (0, 0.0)
    assert math.isnan(out.loc["b", "days_to_next_purchase"])
    # a day longer, the purchase at as_of + 30 days enters
    longer = future_value(log, AS_OF, 31)
    assert longer.loc["a", "purchases"] == 3
    assert longer.loc["a", "spend"] == 85.0


def test_future_value_rows_can_be_given(log: pd.DataFrame) -> None:
    out = future_value(log, AS_OF, 30, customers=["c", "zz", "a"])
    assert list(out.index) == ["c", "zz", "a"]
    assert out["purchases"].tolist() == [1, 0, 2]
    assert out.loc["c", "days_to_next_purchase"] == 1.0


def test_future_purchases_are_the_increase_of_purchase_days() -> None:
    # as_of at noon: the purchase at 15:00 shares its UTC day with one at 09:00, before
    # as_of, so it is no new purchase day; x bought nothing earlier that day
    events = frame(
        [
            ("w", "2024-01-05T08:00:00Z", "purchase", 1.0),
            ("w", "2024-03-01T09:00:00Z", "purchase", 2.0),
            ("w", "2024-03-01T15:00:00Z", "purchase", 4.0),
            ("w", "2024-03-03T15:00:00Z", "purchase", 8.0),
            ("x", "2024-02-01T09:00:00Z", "login"),
            ("x", "2024-03-01T15:00:00Z", "purchase", 16.0),
        ]
    )
    as_of, end = "2024-03-01T12:00:00Z", "2024-03-11T12:00:00Z"
    out = future_value(events, as_of, 10)
    assert out.loc["w", "purchases"] == 1
    assert out.loc["w", "spend"] == 12.0  # every purchase amount in the window is spend
    assert out.loc["w", "days_to_next_purchase"] == 2.125  # Mar 3 15:00, not Mar 1 15:00
    assert out.loc["x", "purchases"] == 1
    assert out.loc["x", "days_to_next_purchase"] == 0.125
    start, stop = build_features(events, as_of=as_of), build_features(events, as_of=end)
    increase = stop.loc[out.index, "purchase_days"] - start.loc[out.index, "purchase_days"]
    np.testing.assert_array_equal(out["purchases"].to_numpy(), increase.to_numpy())


@pytest.mark.parametrize("horizon", [0, -3, math.nan, "365"])
def test_future_value_refuses_a_bad_horizon(log: pd.DataFrame, horizon: object) -> None:
    with pytest.raises(ValueError, match="horizon_days must be a finite number > 0"):
        future_value(log, AS_OF, horizon)  # type: ignore[arg-type]


def test_small_case_against_hand_computed_values() -> None:
    actual_n = [0.0, 1.0, 2.0, 5.0]
    actual_s = [0.0, 10.0, 30.0, 100.0]
    pred_n = [1.0, 1.0, 3.0, 3.0]
    pred_s = [5.0, 20.0, 10.0, 60.0]
    m = value_metrics(actual_n, actual_s, pred_n, pred_s)
    assert m["n_customers"] == 4
    # purchase errors 1, 0, 1, -2; spend errors 5, 10, -20, -40
    assert m["purchases_mae"] == pytest.approx(4 / 4)
    assert m["purchases_rmse"] == pytest.approx(math.sqrt(6 / 4))
    assert m["spend_mae"] == pytest.approx(75 / 4)
    assert m["spend_rmse"] == pytest.approx(math.sqrt((25 + 100 + 400 + 1600) / 4))
    # ranks: actual 1 2 3 4; predicted purchases tied 1.5 1.5 3.5 3.5
    assert m["purchases_spearman"] == pytest.approx(
        np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3.5, 3.5])[0, 1]
    )
    # predicted spend ranks 1 3 2 4 against 1 2 3 4: 1 - 6 * 2 / (4 * 15)
    assert m["spend_spearman"] == pytest.approx(0.8)
    # the top decile of 4 customers is ceil(0.4) = 1 customer: the one who spent 100
    assert m["spend_top_decile_share"] == pytest.approx(100 / 140)
    assert m["spend_top_decile_share_best"] == pytest.approx(100 / 140)
    assert m["purchases_calibration_ratio"] == pytest.approx((8 / 4) / (8 / 4))
    # each decile holds under 30 customers: no decile enters the summary
    assert m["purchases_calibration_deciles"] == 0
    assert math.isnan(m["purchases_calibration_max_abs_log_ratio"])
    assert m["purchases_n_excluded"] == m["spend_n_excluded"] == 0


def test_top_decile_ties_at_the_cut_are_split_in_proportion() -> None:
    # 10 customers: the top decile is one customer, but the best two are tied
    actual = np.array([0, 0, 0, 0, 0, 0, 0, 0, 30.0, 10.0])
    predicted = np.array([1, 1, 1, 1, 1, 1, 1, 1, 9.0, 9.0])
    m = value_metrics(actual, actual, predicted, predicted)
    assert m["spend_top_decile_share"] == pytest.approx((30 + 10) / 2 / 40)
    assert m["spend_top_decile_share_best"] == pytest.approx(30 / 40)


def test_calibration_by_decile() -> None:
    # 100 customers in 10 clear deciles of 10 equal predictions each; min 10 per decile.
    # Every decile is predicted exactly except the one of actual 6, predicted at 3.5.
    level = np.repeat(np.arange(1.0, 11.0), 10)
    actual = level.copy()
    predicted = level.copy()
    predicted[level == 6] = 3.5
    m = value_metrics(actual, actual, predicted, predicted, min_bin_customers=10)
    assert m["purchases_calibration_deciles"] == 10
    assert m["purchases_calibration_max_abs_log_ratio"] == pytest.approx(math.log(6 / 3.5))
    assert m["purchases_calibration_ratio"] == pytest.approx(predicted.mean() / actual.mean())
    # deciles without a buyer are left out, not an infinite ratio
    actual[level == 1] = 0.0
    m = value_metrics(actual, actual, predicted, predicted, min_bin_customers=10)
    assert m["purchases_calibration_deciles"] == 9


def test_perfect_predictions() -> None:
    rng = np.random.default_rng(4)
    n = rng.poisson(2.0, 500).astype(float)
    spend = n * rng.gamma(2.0, 20.0, 500)
    days = np.where(n > 0, rng.uniform(0, 300, 500), np.nan)
    m = value_metrics(n, spend, n, spend, days, days)
    for key in ("purchases_mae", "purchases_rmse", "spend_mae", "spend_rmse"):
        assert m[key] == 0.0
    assert m["purchases_spearman"] == pytest.approx(1.0)
    assert m["spend_spearman"] == pytest.approx(1.0)
    assert m["spend_top_decile_share"] == m["spend_top_decile_share_best"]
    assert m["purchases_calibration_ratio"] == pytest.approx(1.0)
    assert m["purchases_calibration_max_abs_log_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert m["next_days_mae"] == m["next_days_median_ae"] == 0.0
    assert m["next_days_coverage"] == 1.0
    assert m["next_days_buyers"] == (n > 0).sum()


def test_reversed_predictions() -> None:
    actual = np.arange(1.0, 51.0)
    m = value_metrics(actual, actual, actual[::-1], actual[::-1])
    assert m["purchases_spearman"] == pytest.approx(-1.0)
    assert m["spend_spearman"] == pytest.approx(-1.0)
    # the top 5 by prediction are the 5 smallest spenders
    assert m["spend_top_decile_share"] == pytest.approx(15 / actual.sum())


def test_nan_predictions_are_counted_and_left_out() -> None:
    actual_n = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
    actual_s = np.array([10.0, 20.0, 30.0, 0.0, 40.0])
    pred_n = np.array([1.0, 2.0, 3.0, np.nan, np.nan])
    pred_s = np.array([10.0, 20.0, 30.0, np.nan, 10.0])
    m = value_metrics(actual_n, actual_s, pred_n, pred_s)
    assert m["purchases_n_excluded"] == 2
    assert m["spend_n_excluded"] == 1
    assert m["purchases_mae"] == 0.0  # the three predicted are exact
    assert m["spend_mae"] == pytest.approx(30 / 4)
    assert m["spend_excluded_revenue_share"] == 0.0  # the one left out spent nothing
    assert all(not math.isnan(v) for k, v in m.items() if "calibration_max" not in k)


def test_next_purchase_date_errors_and_coverage() -> None:
    # customers 0-3 bought (first purchase after 10, 20, 30, 40 days); 4 did not
    actual = np.array([10.0, 20.0, 30.0, 40.0, np.nan])
    predicted = np.array([12.0, 14.0, np.nan, 41.0, 5.0])
    zeros = np.zeros(5)
    m = value_metrics(zeros, zeros, zeros, zeros, predicted, actual)
    assert m["next_days_buyers"] == 4
    assert m["next_days_coverage"] == 0.75
    # errors 2, 6, 1 over the dated buyers; the non-buyer's prediction is not scored
    assert m["next_days_mae"] == pytest.approx(3.0)
    assert m["next_days_median_ae"] == 2.0
    assert math.isnan(m["spend_top_decile_share"])  # nobody spent anything
    assert math.isnan(m["spend_spearman"])  # constant: undefined, not 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([1.0], [1.0, 2.0], [1.0], [1.0]), {}, "differ in length"),
        (([np.nan], [1.0], [1.0], [1.0]), {}, "must not be NaN"),
        (([1.0], [1.0], [1.0], [1.0], [3.0]), {}, "give both"),
        (([1.0], [1.0], [1.0], [1.0]), {"min_bin_customers": 0}, "min_bin_customers"),
    ],
)
def test_bad_input_is_one_line(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        value_metrics(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_plots_show_the_binned_means_and_the_gains() -> None:
    actual = np.arange(100.0)
    predicted = actual * 2.0
    predicted[:3] = np.nan
    figs = value_plots(actual, actual, predicted, predicted)
    assert set(figs) == {"value_predicted_vs_actual", "value_gains"}
    assert all(isinstance(f, Figure) for f in figs.values())
    purchases_ax = figs["value_predicted_vs_actual"].axes[0]
    x, y = purchases_ax.lines[1].get_data()
    # 97 predicted customers in 10 quantile bins: predicted is twice the actual mean
    assert len(x) == 10
    np.testing.assert_allclose(np.asarray(x), 2 * np.asarray(y))
    gains_ax = figs["value_gains"].axes[0]
    model, oracle = gains_ax.lines[0].get_ydata(), gains_ax.lines[1].get_ydata()
    np.testing.assert_allclose(model, oracle)  # a perfect ranking is the oracle
    assert model[-1] == pytest.approx(1.0)
