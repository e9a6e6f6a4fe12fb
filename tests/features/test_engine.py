"""The in-memory feature engine: hand-computed families, point in time, snapshots, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features import engine
from customer_lifecycle.features.definition import definition_from_dict, load_definition
from customer_lifecycle.features.engine import build_features, feature_matrix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

AS_OF = "2024-03-01T00:00:00Z"


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Events from ``(customer_id, timestamp, event_type[, amount])`` tuples."""
    return pd.DataFrame(
        [(r[0], r[1], r[2], r[3] if len(r) > 3 else np.nan) for r in rows],
        columns=["customer_id", "timestamp", "event_type", "amount"],
    )


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return frame(
        [
            # customer a: browsing, three purchases on two days, a review
            ("a", "2023-12-01T12:00:00Z", "page_view"),  # 90.5 days before as_of
            ("a", "2024-01-15T00:00:00Z", "product_view"),  # 46 days
            ("a", "2024-02-01T00:00:00Z", "purchase", 100.0),  # 29 days
            ("a", "2024-02-01T18:00:00Z", "purchase", 50.0),  # same UTC day
            ("a", "2024-02-11T06:00:00Z", "purchase", 30.0),  # 18.75 days
            ("a", "2024-02-25T00:00:00Z", "review"),  # 5 days
            ("a", "2024-03-01T00:00:00Z", "purchase", 999.0),  # exactly at as_of: excluded
            ("a", "2024-03-05T00:00:00Z", "login"),  # after as_of: excluded
            # customer b: a single event
            ("b", "2024-02-29T12:00:00Z", "ad_click"),
            # customer c: only after as_of, so not a customer yet
            ("c", "2024-03-02T00:00:00Z", "page_view"),
            # customer d: purchase days 10 and 20 days apart, one amount missing
            ("d", "2024-01-01T10:00:00Z", "purchase", 10.0),
            ("d", "2024-01-11T10:00:00Z", "purchase"),
            ("d", "2024-01-31T10:00:00Z", "purchase", 20.0),
        ]
    )


@pytest.fixture(scope="module")
def tiny_features(tiny: pd.DataFrame) -> pd.DataFrame:
    return build_features(tiny, as_of=AS_OF)


def test_rows_are_customers_seen_before_as_of(tiny_features: pd.DataFrame) -> None:
    assert list(tiny_features.index) == ["a", "b", "d"]
    assert tiny_features.index.name == "customer_id"
    assert list(tiny_features.columns) == load_definition().feature_names()
    assert (tiny_features.dtypes == "float64").all()


@pytest.mark.parametrize(
    ("customer", "column", "expected"),
    [
        # counts in trailing windows: the page view 90.5 days back is outside 90d
        ("a", "count_all_7d", 1),
        ("a", "count_all_30d", 4),
        ("a", "count_all_90d", 5),
        ("a", "count_all_365d", 6),
        ("a", "count_all_all", 6),
        ("a", "count_purchase_30d", 3),
        ("a", "count_browse_all", 2),
        ("a", "count_advocacy_7d", 1),
        # recency per group, in fractional days
        ("a", "recency_purchase_days", 18.75),
        ("a", "recency_browse_days", 46.0),
        ("a", "recency_all_days", 5.0),
        # monetary totals and means
        ("a", "amount_purchase_sum_30d", 180.0),
        ("a", "amount_purchase_sum_all", 180.0),
        ("a", "amount_purchase_mean_all", 60.0),
        ("a", "amount_refund_sum_all", 0.0),
        # trends: recent 30 days against the 60 before, scaled to 30 days
        ("a", "trend_all", math.log(5 / 1.5)),
        ("a", "trend_purchase", math.log(4)),
        # active days: distinct UTC days
        ("a", "active_days_7d", 1),
        ("a", "active_days_30d", 3),
        ("a", "active_days_all", 5),
        # funnel depth: a review is level 6
        ("a", "funnel_depth_all", 6),
        ("a", "funnel_depth_30d", 6),
        # activity when last seen (a's last event is the review on Feb 25)
        ("a", "last_active_count_all_1d", 1),
        ("a", "last_active_count_advocacy_7d", 1),
        ("a", "last_active_count_all_7d", 1),
        ("a", "last_active_count_all_30d", 4),
        ("a", "last_active_count_purchase_30d", 3),
        ("a", "last_active_funnel_depth_1d", 6),
        ("a", "last_active_count_type_review_1d", 1),
        ("a", "last_active_count_type_purchase_7d", 0),
        ("a", "last_active_count_type_purchase_30d", 3),
        ("a", "last_active_count_type_product_view_30d", 0),
        ("a", "gap_purchase_days", 13.75),
        ("a", "gap_browse_days", 41.0),
        ("a", "gap_advocacy_days", 0.0),
        # tenure
        ("a", "tenure_days", 90.5),
        # purchase cadence: purchase days Feb 1 and Feb 11
        ("a", "purchase_days", 2),
        ("a", "purchase_gap_mean_days", 10.0),
        ("a", "purchase_gap_std_days", 0.0),
        ("a", "purchase_overdue_ratio", 1.875),
        # buy-till-you-die summaries
        ("a", "btyd_frequency", 1),
        ("a", "btyd_recency_days", 10.25),
        ("a", "btyd_age_days", 29.0),
        # spend of the repeat purchase day (Feb 11) only: Feb 1 is the first purchase day
        ("a", "btyd_mean_spend", 30.0),
        # a single event
        ("b", "count_all_all", 1),
        ("b", "count_acquisition_7d", 1),
        ("b", "recency_all_days", 0.5),
        ("b", "tenure_days", 0.5),
        ("b", "funnel_depth_all", 1),
        ("b", "active_days_all", 1),
        # gaps 10 and 20 days: mean 15, population std 5; a missing amount is skipped
        ("d", "purchase_gap_mean_days", 15.0),
        ("d", "purchase_gap_std_days", 5.0),
        ("d", "btyd_frequency", 2),
        ("d", "amount_purchase_sum_all", 30.0),
        ("d", "amount_purchase_mean_all", 15.0),
        # repeat days Jan 11 (no amount: not a day of zero spend) and Jan 31 (20)
        ("d", "btyd_mean_spend", 20.0),
    ],
)
def test_family_against_hand_computed_value(
    tiny_features: pd.DataFrame, customer: str, column: str, expected: float
) -> None:
    assert tiny_features.loc[customer, column] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "column",
    [
        # a customer who never purchased has no purchase recency, cadence or BTYD age
        "recency_purchase_days",
        "amount_purchase_mean_all",
        "purchase_gap_mean_days",
        "purchase_gap_std_days",
        "purchase_overdue_ratio",
        "btyd_recency_days",
        "btyd_age_days",
        "btyd_mean_spend",
        "gap_purchase_days",
    ],
)
def test_never_purchased_is_nan_not_zero(tiny_features: pd.DataFrame, column: str) -> None:
    assert math.isnan(tiny_features.loc["b", column])


def test_never_purchased_counts_are_zero(tiny_features: pd.DataFrame) -> None:
    row = tiny_features.loc["b"]
    assert row["purchase_days"] == 0
    assert row["btyd_frequency"] == 0
    assert row["amount_purchase_sum_all"] == 0


def test_event_exactly_at_as_of_is_excluded(tiny: pd.DataFrame) -> None:
    later = build_features(tiny, as_of="2024-03-01T00:00:00.000000001Z")
    before = build_features(tiny, as_of=AS_OF)
    assert later.loc["a", "count_purchase_all"] == before.loc["a", "count_purchase_all"] + 1
    assert later.loc["a", "recency_purchase_days"] == pytest.approx(1e-9 / 86_400)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("1678-01-02", "1700-03-01"),  # 347 and 325 years before as_of: beyond int64 ns
        ("1750-01-01", "1760-03-01"),  # 275 and 265 years: spans int64 still holds
    ],
)
def test_centuries_old_events_give_their_days_and_stay_out_of_every_window(
    first: str, second: str
) -> None:
    times = pd.to_datetime([first, second, "2024-11-30"], utc=True)
    ev = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a"],
            "timestamp": times,
            "event_type": ["purchase", "purchase", "page_view"],
            "amount": [10.0, 20.0, np.nan],
        }
    )
    as_of = pd.Timestamp("2024-12-31", tz="UTC")
    f = build_features(ev, as_of=as_of).loc["a"]
    oldest = times[0]

    def days(later: pd.Timestamp, earlier: pd.Timestamp) -> float:
        # whole seconds apart here, so float seconds are exact enough
        return (later.timestamp() - earlier.timestamp()) / 86_400

    assert f["tenure_days"] == pytest.approx(days(as_of, oldest), rel=1e-12)
    assert f["btyd_age_days"] == pytest.approx(days(as_of, oldest), rel=1e-12)
    assert f["btyd_recency_days"] == pytest.approx(days(times[1], times[0]), rel=1e-12)
    assert f["recency_all_days"] == pytest.approx(days(as_of, times[2]))
    # only the November event is recent; the old ones count in "all" only
    assert [f[f"count_all_{w}"] for w in ("7d", "30d", "90d", "365d", "all")] == [0, 0, 1, 1, 3]


def test_input_is_not_modified(tiny: pd.DataFrame) -> None:
    copy = tiny.copy(deep=True)
    build_features(tiny, as_of=AS_OF)
    pd.testing.assert_frame_equal(tiny, copy)


def test_mixed_time_zones_are_the_same_instants(tiny: pd.DataFrame) -> None:
    shifted = tiny.copy()
    utc = pd.to_datetime(tiny["timestamp"], utc=True)
    offsets = ["+02:00", "-05:00", "Z", ""]  # the last is naive, which means UTC
    rendered = []
    for i, ts in enumerate(utc):
        off = offsets[i % len(offsets)]
        if off in ("", "Z"):
            rendered.append(ts.strftime("%Y-%m-%dT%H:%M:%S") + off)
        else:
            rendered.append(ts.tz_convert(off).isoformat())
    shifted["timestamp"] = rendered
    pd.testing.assert_frame_equal(
        build_features(shifted, as_of="2024-03-01T01:00:00+01:00"),
        build_features(tiny, as_of=AS_OF),
    )


def test_canonical_categorical_frame_gives_the_same_features(tiny: pd.DataFrame) -> None:
    canonical = tiny.assign(
        customer_id=pd.Categorical(tiny["customer_id"]),
        event_type=pd.Categorical(tiny["event_type"]),
        timestamp=pd.to_datetime(tiny["timestamp"], utc=True),
    )
    pd.testing.assert_frame_equal(
        build_features(canonical, as_of=AS_OF), build_features(tiny, as_of=AS_OF)
    )


def test_unsorted_input_gives_the_same_features(tiny: pd.DataFrame) -> None:
    shuffled = tiny.sample(frac=1.0, random_state=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        build_features(shuffled, as_of=AS_OF), build_features(tiny, as_of=AS_OF)
    )


def test_several_snapshots_equal_separate_calls(tiny: pd.DataFrame) -> None:
    times = ["2024-01-20T00:00:00Z", "2024-02-15T12:00:00Z", AS_OF]
    snaps = pd.DataFrame(
        {
            "customer_id": ["a", "d", "a", "b", "a", "d"],
            "as_of": [times[0], times[0], times[1], times[2], times[2], times[2]],
        }
    )
    together = build_features(tiny, snapshots=snaps)
    assert list(together.index.get_level_values("customer_id")) == list(snaps["customer_id"])
    for (customer, when), row in together.iterrows():
        alone = build_features(tiny, as_of=when).loc[customer]
        pd.testing.assert_series_equal(row, alone, check_names=False)


def test_snapshot_of_unknown_or_not_yet_active_customer_is_empty(tiny: pd.DataFrame) -> None:
    snaps = pd.DataFrame({"customer_id": ["zz", "c"], "as_of": [AS_OF, AS_OF]})
    out = build_features(tiny, snapshots=snaps)
    assert (out["count_all_all"] == 0).all()
    assert out["recency_all_days"].isna().all()
    assert (out["btyd_frequency"] == 0).all()


def test_lenient_unknown_event_type_counts_only_in_all(tiny: pd.DataFrame) -> None:
    extra = pd.concat([tiny, frame([("b", "2024-02-20T00:00:00Z", "podcast_listen")])])
    out = build_features(extra, as_of=AS_OF)
    base = build_features(tiny, as_of=AS_OF)
    assert out.loc["b", "count_all_all"] == base.loc["b", "count_all_all"] + 1
    group_counts = [c for c in out.columns if c.startswith("count_") and "_all_" not in c]
    pd.testing.assert_series_equal(out.loc["b", group_counts], base.loc["b", group_counts])


def test_progress_reports_every_customer(tiny: pd.DataFrame) -> None:
    calls: list[tuple[int, int]] = []
    build_features(tiny, as_of=AS_OF, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == 4  # a, b, c, d


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # neither or both of as_of and snapshots
        ({}, "exactly one of as_of"),
        ({"as_of": AS_OF, "snapshots": pd.DataFrame()}, "exactly one of as_of"),
        # an as_of that is not a time
        ({"as_of": "last tuesday"}, "not an ISO 8601 time"),
        # snapshots without their as_of column
        ({"snapshots": pd.DataFrame({"customer_id": ["a"]})}, "missing the column 'as_of'"),
        # a snapshot time that cannot be parsed
        (
            {"snapshots": pd.DataFrame({"customer_id": ["a"], "as_of": ["soon"]})},
            "snapshots row 0",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny: pd.DataFrame, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_features(tiny, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        # each required column, named in the message
        ("customer_id", "'customer_id'"),
        ("timestamp", "'timestamp'"),
        ("event_type", "'event_type'"),
    ],
)
def test_missing_column_is_named(tiny: pd.DataFrame, drop: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_features(tiny.drop(columns=drop), as_of=AS_OF)


def test_unparseable_timestamp_is_refused(tiny: pd.DataFrame) -> None:
    bad = tiny.copy()
    bad.loc[3, "timestamp"] = "yesterday-ish"
    with pytest.raises(ValueError, match="timestamp"):
        build_features(bad, as_of=AS_OF)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a typo in an event type is named with a suggestion
        ({"groups": {"purchase": ["purchse"], "refund": ["refund"]}}, "did you mean 'purchase'"),
        # a typo in a setting name
        ({"count_window_days": [7]}, "did you mean 'count_windows_days'"),
        # windows out of order would break the prefix sums
        ({"count_windows_days": [30, 7]}, "increasing order"),
        # a monetary group that does not exist
        ({"monetary_groups": ["purchases"]}, "unknown group 'purchases'"),
        # the trend needs recent < baseline
        ({"trend": {"recent_days": 90, "baseline_days": 30}}, "recent_days < baseline_days"),
    ],
)
def test_bad_definition_is_one_clear_line(change: dict, message: str) -> None:
    data = load_definition().to_dict() | change
    with pytest.raises(ValueError, match=message) as info:
        definition_from_dict(data)
    assert "\n" not in str(info.value)


def test_definition_round_trips_through_its_dict() -> None:
    d = load_definition()
    assert definition_from_dict(d.to_dict()) == d


def test_custom_definition_changes_the_columns(tiny: pd.DataFrame) -> None:
    data = load_definition().to_dict() | {"count_windows_days": [14, 30, 90]}
    out = build_features(tiny, as_of=AS_OF, definition=definition_from_dict(data))
    assert "count_all_14d" in out.columns and "count_all_7d" not in out.columns
    assert out.loc["a", "count_all_14d"] == 1


# -- point in time, as a property -------------------------------------------------------

TYPES = ["page_view", "product_view", "add_to_cart", "purchase", "refund", "review", "login"]
START = pd.Timestamp("2023-01-01T00:00:00Z")
SPAN_S = 2 * 365 * 86_400


@st.composite
def log_and_as_of(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.Timestamp]:
    n = draw(st.integers(1, 40))
    customers = draw(st.lists(st.sampled_from("pqrstu"), min_size=n, max_size=n))
    # coarse seconds make same-day and same-instant events common
    secs = draw(st.lists(st.integers(0, SPAN_S // 3600), min_size=n, max_size=n))
    types = draw(st.lists(st.sampled_from(TYPES), min_size=n, max_size=n))
    amounts = draw(
        st.lists(st.one_of(st.none(), st.floats(0, 500, allow_nan=False)), min_size=n, max_size=n)
    )
    events = pd.DataFrame(
        {
            "customer_id": customers,
            "timestamp": [START + pd.Timedelta(hours=s) for s in secs],
            "event_type": types,
            "amount": [np.nan if a is None else a for a in amounts],
        }
    )
    # as_of is often exactly an event time, to exercise the strict boundary
    if draw(st.booleans()):
        as_of = events["timestamp"].iloc[draw(st.integers(0, n - 1))]
    else:
        as_of = START + pd.Timedelta(hours=draw(st.integers(0, SPAN_S // 3600)))
    return events, as_of


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=log_and_as_of(), data=st.data())
def test_events_at_or_after_as_of_change_nothing(
    case: tuple[pd.DataFrame, pd.Timestamp], data: st.DataObject
) -> None:
    events, as_of = case
    expected = build_features(events, as_of=as_of)
    before = events[events["timestamp"] < as_of]
    later = events[events["timestamp"] >= as_of].copy()
    # delete some later events, change the others, add new ones (some exactly at as_of)
    keep = data.draw(st.lists(st.booleans(), min_size=len(later), max_size=len(later)))
    later = later[np.array(keep, dtype=bool)] if len(later) else later
    later["event_type"] = data.draw(
        st.lists(st.sampled_from(TYPES), min_size=len(later), max_size=len(later))
    )
    later["amount"] = later["amount"] * 3 + 1
    k = data.draw(st.integers(0, 5))
    added = pd.DataFrame(
        {
            "customer_id": data.draw(st.lists(st.sampled_from("pqrvw"), min_size=k, max_size=k)),
            "timestamp": [
                as_of + pd.Timedelta(minutes=m)
                for m in data.draw(st.lists(st.integers(0, 10**6), min_size=k, max_size=k))
            ],
            "event_type": data.draw(st.lists(st.sampled_from(TYPES), min_size=k, max_size=k)),
            "amount": [5.0] * k,
        }
    )
    changed = pd.concat([later, before, added], ignore_index=True)
    pd.testing.assert_frame_equal(build_features(changed, as_of=as_of), expected)


@settings(max_examples=60, deadline=None)
@given(case=log_and_as_of())
def test_snapshot_rows_equal_single_as_of_rows(case: tuple[pd.DataFrame, pd.Timestamp]) -> None:
    events, as_of = case
    single = build_features(events, as_of=as_of)
    snaps = pd.DataFrame({"customer_id": list(single.index), "as_of": as_of})
    multi = build_features(events, snapshots=snaps)
    np.testing.assert_array_equal(multi.to_numpy(), single.to_numpy())


def test_btyd_summary_is_consistent_when_purchases_share_a_day() -> None:
    # two purchases on one UTC day: no repeat purchase, so BG/NBD needs t_x == 0
    events = frame(
        [
            ("e", "2024-02-01T01:00:00Z", "purchase", 5.0),
            ("e", "2024-02-01T23:00:00Z", "purchase", 5.0),
        ]
    )
    row = build_features(events, as_of=AS_OF).loc["e"]
    assert row["btyd_frequency"] == 0
    assert row["btyd_recency_days"] == 0
    assert row["btyd_age_days"] == pytest.approx(29 - 1 / 24)
    assert math.isnan(row["btyd_mean_spend"])  # no repeat purchase day, no repeat spend


def test_btyd_mean_spend_is_per_repeat_purchase_day() -> None:
    events = frame(
        [
            ("f", "2024-01-01T23:00:00Z", "purchase", 1000.0),  # first day: time 0, left out
            ("f", "2024-01-02T00:00:00Z", "purchase", 10.0),  # next UTC day, 1 hour later
            ("f", "2024-01-02T20:00:00Z", "purchase", 30.0),  # same day: one day of 40
            ("f", "2024-01-03T08:00:00Z", "refund", 40.0),  # refunds are not purchases
            ("f", "2024-01-20T08:00:00Z", "purchase", 20.0),
            ("f", "2024-01-20T09:00:00Z", "purchase"),  # no amount: skipped, day still 20
            ("f", "2024-02-10T08:00:00Z", "page_view", 500.0),  # not a purchase
            ("f", "2024-03-01T00:00:00Z", "purchase", 70.0),  # at as_of: excluded
            # g's only repeat day has no amount: no repeat spend is known
            ("g", "2024-01-01T00:00:00Z", "purchase", 5.0),
            ("g", "2024-01-05T00:00:00Z", "purchase"),
        ]
    )
    out = build_features(events, as_of=AS_OF)
    assert out.loc["f", "btyd_frequency"] == 2
    assert out.loc["f", "btyd_mean_spend"] == (10.0 + 30.0 + 20.0) / 2
    assert out.loc["g", "btyd_frequency"] == 1
    assert math.isnan(out.loc["g", "btyd_mean_spend"])


def test_unused_customer_categories_are_not_rows(tiny: pd.DataFrame) -> None:
    # a filtered categorical log keeps categories of customers it no longer holds
    cat = tiny.assign(customer_id=pd.Categorical(tiny["customer_id"], categories=list("abcdxyz")))
    out = build_features(cat[cat["customer_id"] != "d"], as_of=AS_OF)
    assert list(out.index) == ["a", "b"]
    pd.testing.assert_frame_equal(out, build_features(tiny, as_of=AS_OF).loc[["a", "b"]])


@settings(max_examples=60, deadline=None)
@given(case=log_and_as_of())
def test_array_entry_point_equals_the_frame_entry_point(
    case: tuple[pd.DataFrame, pd.Timestamp],
) -> None:
    # feature_matrix (the API's path, no pandas) gives one row per customer code, empty
    # histories included: the same values as build_features gives for snapshots.
    events, as_of = case
    ids = sorted(set(events["customer_id"])) + ["never-seen"]
    codes = pd.Index(ids).get_indexer(events["customer_id"])
    types = tuple(TYPES)
    X = feature_matrix(
        codes,
        pd.DatetimeIndex(events["timestamp"]).as_unit("ns").asi8,
        pd.Index(types).get_indexer(events["event_type"]),
        events["amount"].to_numpy(dtype=np.float64),
        n_customers=len(ids),
        type_names=types,
        as_of_ns=as_of.as_unit("ns").value,
        definition=load_definition(),
    )
    snaps = pd.DataFrame({"customer_id": ids, "as_of": as_of})
    np.testing.assert_array_equal(X, build_features(events, snapshots=snaps).to_numpy())
    assert X.flags.c_contiguous


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a code outside [0, n_customers)
        ({"customer_codes": np.array([0, 2])}, "customer codes must lie in"),
        # an event-type code outside type_names
        ({"type_codes": np.array([0, 5])}, "event-type codes must lie in"),
        # arrays of different lengths
        ({"amount": np.array([1.0])}, "differ in length"),
    ],
)
def test_array_entry_point_refuses_bad_arrays(change: dict, message: str) -> None:
    args = {
        "customer_codes": np.array([0, 1]),
        "t_ns": np.array([0, 10**9]),
        "type_codes": np.array([0, 1]),
        "amount": np.array([np.nan, 2.0]),
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        feature_matrix(
            **args,
            n_customers=2,
            type_names=("page_view", "purchase"),
            as_of_ns=2 * 10**9,
            definition=load_definition(),
        )


@settings(max_examples=40, deadline=None)
@given(case=log_and_as_of(), chunk=st.integers(1, 4), data=st.data())
def test_chunks_of_customers_change_nothing(
    case: tuple[pd.DataFrame, pd.Timestamp], chunk: int, data: st.DataObject
) -> None:
    # The kernels run chunk by chunk of customers, reusing one chunk's accumulators:
    # tiny chunks (many boundaries, snapshots in any order) must give the same values.
    events, as_of = case
    ids = sorted(set(events["customer_id"])) + ["never-seen"]
    k = data.draw(st.integers(1, 12))
    snaps = pd.DataFrame(
        {
            "customer_id": data.draw(st.lists(st.sampled_from(ids), min_size=k, max_size=k)),
            "as_of": [
                as_of + pd.Timedelta(hours=h)
                for h in data.draw(st.lists(st.integers(-2000, 2000), min_size=k, max_size=k))
            ],
        }
    )
    whole_as_of = build_features(events, as_of=as_of)
    whole_snaps = build_features(events, snapshots=snaps)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "CHUNK_CUSTOMERS", chunk)
        pd.testing.assert_frame_equal(build_features(events, as_of=as_of), whole_as_of)
        pd.testing.assert_frame_equal(build_features(events, snapshots=snaps), whole_snaps)


def test_a_filtered_frame_with_a_gappy_index_gives_the_same_features(tiny: pd.DataFrame) -> None:
    # a frame filtered by the caller keeps its index labels; converting it must go by
    # position (it used to align timestamps by label and refuse the frame)
    plain = tiny.astype({"timestamp": str}).reset_index(drop=True)
    gappy = plain.set_axis(np.arange(len(plain)) * 7 + 3)
    pd.testing.assert_frame_equal(
        build_features(gappy, as_of=AS_OF), build_features(plain, as_of=AS_OF)
    )
