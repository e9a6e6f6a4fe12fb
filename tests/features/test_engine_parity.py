"""Engine parity: the numba engine equals a plain pandas group-by, value for value.

The oracle is :func:`benchmarks.pandas_features.pandas_features`, written independently
from the documented meaning of each column. Counts must agree exactly, other floats to
1e-9 relative, and NaN must sit in the same places.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.pandas_features import pandas_features

START = pd.Timestamp("2023-01-01", tz="UTC")
SPAN_DAYS = 730
DAY_S = 86_400
#: Every window length of the two definitions below (and 0).
EDGE_DAYS = (0, 1, 2, 3, 5, 7, 14, 30, 45, 60, 90, 100, 365, 400)
EXACT_PREFIXES = (
    "count_",
    "active_days_",
    "funnel_depth_",
    "last_active_",
    "purchase_days",
    "btyd_frequency",
)

# Overlapping groups, a type in no group, windows that are not count windows, and a
# different trend: layouts the default definition does not exercise.
CUSTOM = FeatureDefinition(
    groups={
        "shop": ("product_view", "add_to_cart", "purchase"),
        "purchase": ("purchase",),
        "money": ("purchase", "refund"),
        "refund": ("refund",),
        "mail": ("email_open", "email_click"),
        "nobody": ("demo_request",),
    },
    count_windows_days=(1, 45),
    monetary_groups=("money", "refund"),
    monetary_windows_days=(2, 60),
    trend_recent_days=14,
    trend_baseline_days=60,
    active_days_windows_days=(1, 3, 400),
    funnel_levels={1: ("page_view",), 2: ("product_view", "email_click"), 5: ("purchase",)},
    funnel_windows_days=(5, 100),
    last_active_windows_days=(2, 45),
)

# Purchases and refunds are drawn more often than their 1-in-29 share, for cadence.
event_types = st.one_of(
    st.sampled_from(CANONICAL_EVENT_TYPES), st.sampled_from(["purchase", "purchase", "refund"])
)
# Seconds within a day: midnight (day edges), just after it, midday, just before the next.
SECONDS = st.sampled_from([0, 1, 43_200, 86_399])
amounts = st.one_of(st.just(np.nan), st.floats(0, 5_000, allow_nan=False), st.just(0.0))


@st.composite
def event_logs(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.Timestamp]:
    """A small canonical log and an ``as_of``, both crowded around window edges.

    Times are seconds since START, mostly counted back from one base instant by a whole
    number of days (often exactly a window length), so that events sit exactly on the
    edges of the trailing windows (as_of - N days) and of the windows that end at the
    last event; a shared pool of instants makes identical timestamps likely.
    """
    n_customers = draw(st.integers(1, 5))
    base = draw(st.integers(0, SPAN_DAYS)) * DAY_S + draw(SECONDS)
    days_back = st.one_of(st.sampled_from(EDGE_DAYS), st.integers(0, SPAN_DAYS))
    instants = st.one_of(
        days_back.map(lambda k: base - k * DAY_S),
        st.tuples(days_back, SECONDS).map(lambda x: base - x[0] * DAY_S - x[1]),
        st.integers(base - SPAN_DAYS * DAY_S, base + 30 * DAY_S),
    )
    pool = draw(st.lists(instants, min_size=1, max_size=6))
    n_events = draw(st.integers(0, 40))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, n_customers - 1),
                event_types,
                st.one_of(st.sampled_from(pool), instants),
                amounts,
            ),
            min_size=n_events,
            max_size=n_events,
        )
    )
    # as_of on an event or a window length after it (inclusive/exclusive edges), or
    # anywhere, including before every event
    anchors = [base] + [t for _, _, t, _ in rows]
    as_of_s = draw(
        st.one_of(
            st.tuples(st.sampled_from(anchors), st.sampled_from(EDGE_DAYS)).map(
                lambda x: x[0] + x[1] * DAY_S
            ),
            st.integers(base - SPAN_DAYS * DAY_S, base + 400 * DAY_S),
        )
    )
    customers = [f"c{c:03d}" for c, *_ in rows]
    events = pd.DataFrame(
        {
            "customer_id": pd.Categorical(customers),
            "timestamp": START + pd.to_timedelta([s for _, _, s, _ in rows], unit="s"),
            "event_type": pd.Categorical([e for _, e, _, _ in rows]),
            "amount": np.array([a for *_, a in rows], dtype=np.float64),
        }
    )
    if draw(st.booleans()):
        events = events.drop(columns="amount")
    events["timestamp"] = events["timestamp"].astype("datetime64[ns, UTC]")
    return events, START + pd.Timedelta(seconds=as_of_s)


def assert_same_features(engine: pd.DataFrame, oracle: pd.DataFrame) -> None:
    assert list(engine.columns) == list(oracle.columns)
    # An empty result's index dtype is not part of the contract (object or str).
    pd.testing.assert_index_equal(engine.index, oracle.index, exact=len(oracle) > 0)
    assert (engine.dtypes == np.float64).all()
    for name in engine.columns:
        a, b = engine[name].to_numpy(), oracle[name].to_numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN in {name}")
        if name.startswith(EXACT_PREFIXES):
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, err_msg=name)


@pytest.mark.slow  # about half a minute: every example runs both engines
@pytest.mark.parametrize(
    "definition",
    [
        load_definition(),  # the shipped definition
        CUSTOM,  # overlapping groups, uncounted windows, an empty group
    ],
    ids=["default", "custom"],
)
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(log=event_logs())
def test_engine_equals_pandas(
    definition: FeatureDefinition, log: tuple[pd.DataFrame, pd.Timestamp]
) -> None:
    events, as_of = log
    before = events.copy()
    engine = build_features(events, as_of=as_of, definition=definition)
    oracle = pandas_features(events, as_of=as_of, definition=definition)
    assert_same_features(engine, oracle)
    pd.testing.assert_frame_equal(events, before)  # neither modifies its input


def test_pandas_oracle_on_a_known_log() -> None:
    """The oracle itself, against values worked out by hand."""
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "a", "b"],
            "timestamp": [
                "2024-01-01T10:00:00Z",
                "2024-01-01T12:00:00Z",
                "2024-01-11T00:00:00Z",
                "2024-01-11T05:00:00Z",  # same day: not the start of the latest day
                "2024-01-31T00:00:00Z",
                "2024-02-01T00:00:00Z",  # at as_of: excluded, so b has no row
            ],
            "event_type": ["purchase", "purchase", "purchase", "purchase", "page_view", "login"],
            "amount": [10.0, np.nan, 30.0, np.nan, np.nan, np.nan],
        }
    )
    out = pandas_features(events, as_of="2024-02-01", definition=load_definition())
    row = out.loc["a"]
    assert list(out.index) == ["a"]
    assert row["count_purchase_all"] == 4
    assert row["count_all_7d"] == 1
    assert row["amount_purchase_sum_all"] == 40.0
    assert row["amount_purchase_mean_all"] == 20.0
    assert row["recency_purchase_days"] == pytest.approx(20 + 19 / 24)
    assert row["purchase_days"] == 2
    assert row["purchase_gap_mean_days"] == 10.0
    assert row["purchase_gap_std_days"] == 0.0
    assert row["purchase_overdue_ratio"] == pytest.approx((20 + 19 / 24) / 10)
    assert row["btyd_recency_days"] == pytest.approx(9 + 14 / 24)
    assert row["btyd_mean_spend"] == 30.0  # the repeat day Jan 11 only
    assert row["active_days_all"] == 3
    assert row["funnel_depth_30d"] == 4
    assert row["tenure_days"] == pytest.approx(30 + 14 / 24)
    assert row["gap_purchase_days"] == pytest.approx(19 + 19 / 24)
    assert row["last_active_count_all_1d"] == 1
    assert row["last_active_count_purchase_30d"] == 4  # Jan 1 10:00 is 29d14h before
    assert row["last_active_funnel_depth_7d"] == 1
