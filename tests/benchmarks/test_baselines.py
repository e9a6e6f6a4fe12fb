"""The Polars and DuckDB baselines of ``benchmarks.features`` equal the engine (docs/scale.md).

A speed ratio means something only if both sides build the same features: each baseline
must return what :func:`features.engine.build_features` returns, the same customers in
the same order, the same columns, counts exactly, other floats to 1e-9 relative, NaN in
the same places.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.contract import to_canonical_frame
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.duckdb_features import duckdb_features
from benchmarks.features import SPAN_DAYS, START, synthetic_log
from benchmarks.polars_features import polars_features
from tests.features.test_engine_parity import CUSTOM, assert_same_features, event_logs

Baseline = Callable[..., pd.DataFrame]
BASELINES = pytest.mark.parametrize(
    "baseline", [polars_features, duckdb_features], ids=["polars", "duckdb"]
)
AS_OF = "2024-02-01T00:00:00Z"


def hand_made_log() -> pd.DataFrame:
    """Every kind of customer the features tell apart, as plain text columns."""
    rows = [
        # a: purchases on three days (two on one day, one without an amount), refunds,
        # browsing, and events exactly at and after as_of, which must not count
        ("a", "2023-03-01T09:00:00Z", "page_view", None),
        ("a", "2023-11-20T10:00:00Z", "purchase", 25.0),
        ("a", "2023-11-20T18:30:00Z", "purchase", None),
        ("a", "2024-01-05T12:00:00Z", "purchase", 40.0),
        ("a", "2024-01-06T08:00:00Z", "refund", 15.5),
        ("a", "2024-01-20T23:59:59Z", "product_view", None),
        ("a", "2024-01-31T23:59:59.999999999Z", "add_to_cart", None),  # 1 ns before as_of
        ("a", "2024-02-01T00:00:00Z", "purchase", 99.0),  # exactly at as_of: excluded
        ("a", "2024-03-01T00:00:00Z", "login", None),  # after as_of: excluded
        # b: a single event, never purchased
        ("b", "2023-12-24T07:00:00Z", "email_open", None),
        # c: never purchased, but a refund, a login and a review
        ("c", "2022-06-01T00:00:00Z", "search_visit", None),
        ("c", "2024-01-25T00:00:00Z", "refund", 7.25),
        ("c", "2024-01-25T00:00:00Z", "login", None),  # same instant as the refund
        ("c", "2024-01-28T13:00:00Z", "review", None),
        # d: events only at and after as_of, so no row
        ("d", "2024-02-01T00:00:00Z", "page_view", None),
        ("d", "2024-02-02T00:00:00Z", "purchase", 10.0),
        # e: one purchase day
        ("e", "2024-01-10T10:00:00Z", "purchase", 12.0),
        ("e", "2024-01-10T11:00:00Z", "purchase", 13.0),
        # f: repeat purchase days, one of them without any amount, and a refund
        ("f", "2023-12-01T23:00:00Z", "purchase", 500.0),
        ("f", "2023-12-02T01:00:00Z", "purchase", 8.0),
        ("f", "2023-12-02T02:00:00Z", "purchase", 4.0),
        ("f", "2023-12-03T00:00:00Z", "refund", 12.0),
        ("f", "2024-01-15T00:00:00Z", "purchase", None),
        ("f", "2024-01-30T00:00:00Z", "purchase", 6.0),
    ]
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "event_type", "amount"])


def before_1970_log() -> pd.DataFrame:
    """Purchase days on both sides of the epoch and events one nanosecond off window edges."""
    times = [
        "1969-12-20T06:00:00Z",  # purchase day -12
        "1969-12-31T23:59:59.999999999Z",  # 7 days and 1 ns before as_of: out of the 7d window
        "1970-01-01T00:00:00Z",  # exactly 7 days before as_of: in the 7d window
        "1970-01-05T12:00:00Z",  # purchase day 4
        "1970-01-07T23:59:59.999999999Z",  # 1 ns before as_of
    ]
    return pd.DataFrame(
        {
            "customer_id": ["z"] * 5,
            "timestamp": times,
            "event_type": ["purchase", "login", "page_view", "purchase", "email_click"],
            "amount": [5.0, np.nan, np.nan, 8.0, np.nan],
        }
    )


def check(baseline: Baseline, events: pd.DataFrame, as_of: object, d: FeatureDefinition) -> None:
    before = events.copy()
    expected = build_features(events, as_of=as_of, definition=d)
    got = baseline(events, as_of=as_of, definition=d)
    if len(expected) == 0:
        assert len(got) == 0 and list(got.columns) == list(expected.columns)
        return
    assert_same_features(got, expected)
    pd.testing.assert_frame_equal(events, before)  # the input is not modified


@BASELINES
@pytest.mark.parametrize(
    "canonical",
    [
        False,  # text columns, converted by each side
        True,  # the loader's categoricals and UTC nanosecond times
    ],
    ids=["text", "canonical"],
)
def test_hand_made_log(baseline: Baseline, canonical: bool) -> None:
    events = hand_made_log()
    if canonical:
        events = to_canonical_frame(events)
    expected = build_features(events, as_of=AS_OF, definition=load_definition())
    # the log covers what it claims: no row for d, nothing bought by b or c
    assert list(expected.index) == ["a", "b", "c", "e", "f"]
    assert expected.loc[["b", "c"], "recency_purchase_days"].isna().all()
    assert expected.loc["a", "count_purchase_all"] == 3
    assert expected.loc["f", "btyd_frequency"] == 3
    assert expected.loc["f", "btyd_mean_spend"] == (8.0 + 4.0 + 6.0) / 2
    check(baseline, events, AS_OF, load_definition())


@BASELINES
def test_times_before_1970_and_nanosecond_edges(baseline: Baseline) -> None:
    events = before_1970_log()
    expected = build_features(events, as_of="1970-01-08", definition=load_definition())
    assert expected.loc["z", "count_all_7d"] == 3
    assert expected.loc["z", "purchase_gap_mean_days"] == 16  # from day -12 to day 4
    check(baseline, events, "1970-01-08", load_definition())


@BASELINES
@pytest.mark.parametrize(
    "as_of_days",
    [
        400,  # mid-log: many events after as_of, some customers not yet arrived
        SPAN_DAYS,  # the benchmark's as_of, after every event
    ],
)
def test_synthetic_log(baseline: Baseline, as_of_days: int) -> None:
    events = synthetic_log(20_000, 300, seed=3)
    check(baseline, events, START + pd.Timedelta(days=as_of_days), load_definition())


@BASELINES
def test_no_event_before_as_of(baseline: Baseline) -> None:
    check(baseline, hand_made_log(), "2020-01-01", load_definition())


@pytest.mark.slow  # about ten seconds: DuckDB plans a query of some 600 expressions each time
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log=event_logs(),
    # the shipped definition, and one with overlapping groups and uncounted windows
    definition=st.sampled_from([load_definition(), CUSTOM]),
)
def test_random_logs(log: tuple[pd.DataFrame, pd.Timestamp], definition: FeatureDefinition) -> None:
    events, as_of = log
    for baseline in (polars_features, duckdb_features):
        check(baseline, events, as_of, definition)
