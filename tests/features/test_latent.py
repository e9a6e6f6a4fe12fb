"""The latent-stage HMM: EM recovers known parameters, the compressed forward filter equals a
plain daily one, point in time, array and frame paths agree, hostile parameter files fail."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.latent import (
    LatentFilter,
    LatentParams,
    LatentStateFeatures,
    _anchors,
    _Log,
    forecast_states,
    model_features,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

AS_OF = pd.Timestamp("2024-07-01T00:00:00Z")
DAY = pd.Timedelta(days=1)
TYPES = ("page_view", "login", "purchase")


def random_params(rng: np.random.Generator, k: int = 3, n_levels: int = 2) -> LatentParams:
    """A random model over TYPES (plus ``other``), rates spread over two orders of magnitude."""
    v = len(TYPES) + 1

    def dist(*shape: int) -> np.ndarray:
        x = rng.gamma(1.0, size=shape) + 0.05
        return x / x.sum(axis=-1, keepdims=True)

    a = dist(k, k) * 0.2 + np.eye(k) * 0.8
    return LatentParams(
        event_types=TYPES,
        state_names=tuple(f"s{i}" for i in range(k)),
        initial=dist(k),
        transitions=a / a.sum(axis=1, keepdims=True),
        first_event=dist(k, v),
        rates=np.exp(rng.uniform(np.log(0.01), np.log(1.0), size=(k, v))),
        activity_levels=np.exp(np.linspace(-0.7, 0.7, n_levels)),
        activity_weights=dist(n_levels),
        quiet_states=(k - 1,),
    )


def random_events(rng: np.random.Generator, n_customers: int, span_days: int) -> pd.DataFrame:
    """Sparse events with long silent runs (some longer than the filter's table)."""
    rows = []
    for c in range(n_customers):
        n = int(rng.integers(1, 12))
        offsets = rng.uniform(0, span_days, size=n) * 86_400
        if c % 2:  # a burst on one day
            offsets = np.append(offsets, offsets[0] + rng.uniform(0, 3_600, size=3))
        for off in offsets:
            rows.append(
                (
                    f"c{c:03d}",
                    AS_OF - pd.Timedelta(seconds=float(off)),
                    str(rng.choice([*TYPES, "review"])),
                )
            )
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "event_type"])


def dense_filter(
    p: LatentParams, times_ns: np.ndarray, cols: np.ndarray, as_of_ns: int, horizon: int
) -> tuple[np.ndarray, float, float]:
    """The plain forward algorithm, one day at a time, in log space: the reference."""
    day = 86_400 * 10**9
    order = np.argsort(times_ns, kind="stable")
    times_ns, cols = times_ns[order], cols[order]
    days = (as_of_ns - times_ns - 1) // day
    d0 = int(days[0])
    expo0 = (as_of_ns - d0 * day - times_ns[0]) / day
    lam, rates, a = p.activity_levels, p.rates, p.transitions
    total = rates.sum(axis=1)
    log_alpha = np.log(p.activity_weights)[:, None] + np.log(p.initial)[None, :]
    log_alpha = log_alpha + np.log(p.first_event[:, cols[0]])[None, :]
    for d in range(d0, -1, -1):
        if d != d0:
            m = log_alpha.max()
            log_alpha = np.log(np.exp(log_alpha - m) @ a) + m
        hit = cols[(days == d)]
        if d == d0:
            hit = hit[1:]
        ex = expo0 if d == d0 else 1.0
        for li in range(len(lam)):
            log_alpha[li] += -ex * lam[li] * total + np.log(lam[li] * rates[:, hit]).sum(axis=1)
    post = np.exp(log_alpha - log_alpha.max())
    post /= post.sum()
    u = np.ones((len(lam), p.n_states))
    for li in range(len(lam)):
        step = a * np.exp(-lam[li] * total)[None, :]
        for _ in range(horizon):
            u[li] = step @ u[li]
    return post.sum(axis=0), float(post.sum(axis=1) @ np.log(lam)), float((post * u).sum())


def test_compressed_forward_filter_equals_the_plain_daily_one() -> None:
    rng = np.random.default_rng(3)
    for case in range(6):
        p = random_params(rng, k=int(rng.integers(2, 5)), n_levels=int(rng.integers(1, 4)))
        filt = LatentFilter(p, horizon_days=30)
        # spans up to 400 days: silent runs beyond the 64-day table use binary powers
        events = random_events(rng, 6, span_days=[20, 400][case % 2])
        model = LatentStateFeatures.from_params(p, horizon_days=30)
        got = model.transform(events, as_of=AS_OF)
        assert len(got) == events["customer_id"].nunique()
        col_of = {t: i for i, t in enumerate(TYPES)}
        for cid, g in events.groupby("customer_id"):
            t_ns = g["timestamp"].dt.as_unit("ns").astype("int64").to_numpy()
            cols = np.array([col_of.get(t, len(TYPES)) for t in g["event_type"]])
            state, log_act, silent = dense_filter(p, t_ns, cols, AS_OF.value, 30)
            row = got.loc[cid]
            np.testing.assert_allclose(
                row[[f"latent_state_{j}" for j in range(p.n_states)]], state, atol=1e-9
            )
            assert row["latent_log_activity"] == pytest.approx(log_act, abs=1e-9)
            assert row["latent_p_silent_30"] == pytest.approx(silent, rel=1e-7, abs=1e-12)
            assert row["latent_p_quiet"] == pytest.approx(state[-1], abs=1e-9)
        assert filt.feature_names == list(model.get_feature_names_out())


def sample_hmm(
    rng: np.random.Generator,
    p: LatentParams,
    n: int,
    max_days: int,
    last_states: list[int] | None = None,
) -> pd.DataFrame:
    """Customers drawn from the model itself (activity level 1), arriving over max_days;
    each customer's state on the last day is appended to ``last_states`` when given."""
    ids, times, types = [], [], []
    k = p.n_states
    names = [*p.event_types, "other"]
    for c in range(n):
        d = int(rng.integers(0, max_days))
        s = rng.choice(k, p=p.initial)
        start = AS_OF - (d + 1) * DAY
        first = rng.uniform(0, 1)
        ids.append(c)
        times.append(start + first * DAY)
        types.append(rng.choice(len(names), p=p.first_event[s]))
        for day in range(d, -1, -1):
            lo = first if day == d else 0.0
            if day != d:
                s = rng.choice(k, p=p.transitions[s])
            counts = rng.poisson(p.rates[s] * (1 - lo))
            for v, m in enumerate(counts):
                for u in rng.uniform(lo, 1, size=m):
                    ids.append(c)
                    times.append(AS_OF - (day + 1) * DAY + u * DAY)
                    types.append(v)
        if last_states is not None:
            last_states.append(int(s))
    return pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in ids],
            "timestamp": pd.DatetimeIndex(times),
            "event_type": [names[v] for v in types],
        }
    )


def test_em_recovers_the_parameters_of_a_known_hmm() -> None:
    rng = np.random.default_rng(7)
    truth = LatentParams(
        event_types=("page_view", "purchase"),
        state_names=("browsing", "buying"),
        initial=np.array([0.7, 0.3]),
        transitions=np.array([[0.97, 0.03], [0.05, 0.95]]),
        first_event=np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]),
        rates=np.array([[1.2, 0.05, 0.02], [0.3, 0.6, 0.02]]),
        activity_levels=np.array([1.0]),
        activity_weights=np.array([1.0]),
    )
    events = sample_hmm(rng, truth, 1_500, 120)
    model = LatentStateFeatures(
        n_states=2, activity_levels=(1.0,), max_iter=200, tol=1e-7, seed=1
    ).fit(events, as_of=AS_OF)
    fitted = model.params_
    # match states by their purchase rate, and columns by name
    order = np.argsort(fitted.rates[:, fitted.event_types.index("purchase")])
    cols = [fitted.event_types.index(t) for t in truth.event_types] + [len(fitted.event_types)]
    rates = fitted.rates[order][:, cols]
    np.testing.assert_allclose(rates[:, :2], truth.rates[:, :2], rtol=0.1)
    np.testing.assert_allclose(
        fitted.transitions[np.ix_(order, order)], truth.transitions, atol=0.01
    )
    np.testing.assert_allclose(fitted.initial[order], truth.initial, atol=0.05)
    assert model.log_likelihood_[-1] > model.log_likelihood_[0]


def test_fit_is_deterministic_given_the_seed_and_uses_labels() -> None:
    rng = np.random.default_rng(11)
    events = random_events(rng, 60, span_days=200)
    labels = pd.DataFrame(
        {
            "customer_id": sorted(events["customer_id"].unique()),
            "as_of": AS_OF,
        }
    )
    labels["stage"] = np.where(np.arange(len(labels)) % 3 == 0, "buyer", "browser")

    def fit(seed: int) -> dict:
        return (
            LatentStateFeatures(max_customers=40, max_iter=5, seed=seed)
            .fit(events, as_of=AS_OF, labels=labels)
            .params_.to_dict()
        )

    first = fit(1)
    assert first == fit(1)
    assert first != fit(2)  # another subsample
    assert first["state_names"] == [
        "browser_active",
        "buyer_active",
        "browser_quiet",
        "buyer_quiet",
    ]


@pytest.fixture(scope="module")
def model() -> LatentStateFeatures:
    return LatentStateFeatures.from_params(random_params(np.random.default_rng(5)))


def test_array_entry_point_equals_the_frame_path(model: LatentStateFeatures) -> None:
    events = random_events(np.random.default_rng(2), 30, span_days=300)
    frame = model.transform(events, as_of=AS_OF)
    ids = pd.Categorical(events["customer_id"])
    type_names = ("review", "purchase", "page_view", "login", "unknown_type")
    codes = events["event_type"].map({t: i for i, t in enumerate(type_names)}).to_numpy()
    arrays = model.filter_.matrix(
        ids.codes,
        events["timestamp"].dt.as_unit("ns").astype("int64").to_numpy(),
        codes,
        n_customers=len(ids.categories),
        type_names=type_names,
        as_of_ns=AS_OF.value,
    )
    np.testing.assert_array_equal(arrays, frame.loc[list(ids.categories)].to_numpy())


def test_snapshots_give_nan_without_history_and_match_the_as_of_path(
    model: LatentStateFeatures,
) -> None:
    events = random_events(np.random.default_rng(4), 10, span_days=100)
    early = AS_OF - 50 * DAY
    snaps = pd.DataFrame(
        {"customer_id": ["c003", "c003", "nobody"], "as_of": [AS_OF, early, AS_OF]}
    )
    got = model.transform(events, snapshots=snaps)
    assert list(got.index.get_level_values(0)) == ["c003", "c003", "nobody"]
    np.testing.assert_array_equal(
        got.iloc[0].to_numpy(), model.transform(events, as_of=AS_OF).loc["c003"].to_numpy()
    )
    assert got.iloc[2].isna().all()
    before = events[events["timestamp"] < early]
    assert got.iloc[1].isna().all() == (not (before["customer_id"] == "c003").any())
    state = got.iloc[:2, : model.params_.n_states].to_numpy()
    np.testing.assert_allclose(state.sum(axis=1), 1.0)


later = st.lists(
    st.tuples(
        st.sampled_from(["c000", "c001", "new"]),
        st.floats(0, 400 * 86_400, allow_nan=False),
        st.sampled_from([*TYPES, "review"]),
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extra=later, change=st.booleans())
def test_point_in_time_nothing_at_or_after_as_of_is_read(
    model: LatentStateFeatures, extra: list, change: bool
) -> None:
    events = random_events(np.random.default_rng(8), 5, span_days=120)
    # the as_of instant itself is the first excluded time
    add = pd.DataFrame(
        [(c, AS_OF + pd.Timedelta(seconds=s), t) for c, s, t in extra],
        columns=events.columns,
    )
    changed = events.copy()
    if change:  # move existing events to as_of or later
        changed.loc[changed.index[:2], "timestamp"] = AS_OF + pd.Timedelta(hours=5)
        events = pd.concat([events, changed.iloc[:2]], ignore_index=True)
        changed = pd.concat([changed, events.iloc[:2]], ignore_index=True)
        changed.loc[changed.index[:2], "timestamp"] = [AS_OF, AS_OF]
    before = model.transform(events, as_of=AS_OF)
    after = model.transform(pd.concat([changed, add], ignore_index=True), as_of=AS_OF)
    pd.testing.assert_frame_equal(before, after)


def test_params_round_trip_through_json(model: LatentStateFeatures) -> None:
    data = json.loads(json.dumps(model.params_.to_dict()))
    again = LatentParams.from_dict(data)
    assert again.to_dict() == model.params_.to_dict()


def broken(change: str) -> dict:
    data = random_params(np.random.default_rng(0)).to_dict()
    if change == "nan":
        data["rates"][0][1] = float("nan")
    elif change == "negative rate":
        data["rates"][1][0] = -0.5
    elif change == "wrong shape":
        data["rates"] = data["rates"][:2]
    elif change == "non-stochastic row":
        data["transitions"][1][1] += 0.01
    elif change == "missing field":
        del data["initial"]
    elif change == "text":
        data["initial"] = ["a", "b", "c"]
    elif change == "ragged":
        data["transitions"][0] = data["transitions"][0][:2]
    elif change == "format":
        data["format"] = "pickle"
    elif change == "huge":
        data["activity_levels"] = [1.0] * 1_000
        data["activity_weights"] = [1e-3] * 1_000
    return data


@pytest.mark.parametrize(
    "change",
    [
        "nan",
        "negative rate",
        "wrong shape",
        "non-stochastic row",
        "missing field",
        "text",
        "ragged",
        "format",
        "huge",
    ],
)
def test_from_dict_refuses_broken_params_with_one_line(change: str) -> None:
    with pytest.raises(ValueError, match="latent parameters") as info:
        LatentParams.from_dict(broken(change))
    assert "\n" not in str(info.value)


def test_forecast_is_the_filtered_distribution_times_transition_powers(
    model: LatentStateFeatures,
) -> None:
    events = random_events(np.random.default_rng(9), 8, span_days=60)
    feats = model.transform(events, as_of=AS_OF)
    ahead = model.forecast(feats, 10).to_numpy()
    state = feats.iloc[:, : model.params_.n_states].to_numpy()
    step = state.copy()
    for _ in range(10):
        step = step @ model.params_.transitions
    np.testing.assert_allclose(ahead, step, atol=1e-12)
    np.testing.assert_allclose(ahead.sum(axis=1), 1.0)
    np.testing.assert_allclose(forecast_states(state, model.params_, 0), state)
    with pytest.raises(ValueError, match="horizon_days"):
        forecast_states(state, model.params_, -1)


def test_model_features_append_the_latent_columns_row_for_row(
    model: LatentStateFeatures,
) -> None:
    from customer_lifecycle.features.definition import load_definition
    from customer_lifecycle.features.engine import build_features

    definition = load_definition()
    events = random_events(np.random.default_rng(6), 12, span_days=200)
    plain = build_features(events, as_of=AS_OF, definition=definition)
    pd.testing.assert_frame_equal(
        model_features(events, definition=definition, latent=None, as_of=AS_OF), plain
    )
    both = model_features(events, definition=definition, latent=model.filter_, as_of=AS_OF)
    assert list(both.columns) == [*plain.columns, *model.filter_.feature_names]
    pd.testing.assert_frame_equal(both[list(plain.columns)], plain)
    latent = model.transform(events, as_of=AS_OF)
    pd.testing.assert_frame_equal(both[latent.columns], latent.loc[plain.index])

    # snapshots: the rows, in order, duplicates and customers without history included
    early = AS_OF - 150 * DAY
    snaps = pd.DataFrame(
        {
            "customer_id": ["c004", "nobody", "c001", "c004", "c001"],
            "as_of": [AS_OF, AS_OF, early, early, AS_OF],
        }
    )
    got = model_features(events, definition=definition, latent=model.filter_, snapshots=snaps)
    pd.testing.assert_frame_equal(
        got[list(plain.columns)], build_features(events, snapshots=snaps, definition=definition)
    )
    np.testing.assert_array_equal(
        got[latent.columns].to_numpy(), model.transform(events, snapshots=snaps).to_numpy()
    )
    assert got.loc[("nobody", AS_OF), latent.columns].isna().all()


@pytest.mark.parametrize(
    "as_of",
    [
        np.datetime64("2262-04-10T00:00:00", "ns"),  # the latest as_of the API accepts
        np.datetime64("1900-01-01T00:00:00", "ns"),
        np.datetime64("1677-09-23T00:00:00", "ns"),  # as_of near the least int64 time
    ],
)
def test_extreme_times_are_read_at_the_greatest_age(
    model: LatentStateFeatures, as_of: np.datetime64
) -> None:
    # as_of - t of the earliest and latest int64 times overflows int64; the filter reads
    # an event older than 2**62 ns as exactly that old, and never indexes out of bounds
    a = int(as_of.astype(np.int64))
    earliest = int(np.datetime64("1677-09-22T00:00:01", "ns").astype(np.int64))
    day = 86_400 * 10**9
    middle = int(np.datetime64("1960-01-01", "ns").astype(np.int64))
    t = np.array([earliest, earliest + day, earliest + 3 * day, middle, a - day, a - 5])
    t = t[t < a]
    types = np.arange(len(t)) % 3
    got = model.filter_.matrix(
        np.zeros(len(t), dtype=np.int64), t, types, n_customers=1, type_names=TYPES, as_of_ns=a
    )
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, : model.params_.n_states].sum(), 1.0)
    oldest = max(a - 2**62, int(np.iinfo(np.int64).min))
    same = model.filter_.matrix(
        np.zeros(len(t), dtype=np.int64),
        np.maximum(t, oldest),
        types,
        n_customers=1,
        type_names=TYPES,
        as_of_ns=a,
    )
    np.testing.assert_array_equal(got, same)


def test_labels_are_read_as_observations_of_the_state_on_their_day() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "timestamp": [AS_OF - 50 * DAY, AS_OF - 2 * DAY, AS_OF - 9 * DAY, AS_OF - DAY],
            "event_type": ["page_view", "login", "page_view", "login"],
        }
    )
    labels = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b"],
            "as_of": [AS_OF - 10 * DAY, AS_OF, AS_OF + DAY, AS_OF - 3 * DAY],
            "stage": ["lead", "customer", "lead", "lead"],
        }
    )
    log = _Log.from_frame(events)
    seq_cust = np.arange(3, dtype=np.int64)  # a, b, c
    seq_asof = np.full(3, AS_OF.value, dtype=np.int64)
    p = LatentStateFeatures(max_iter=1).fit(events, as_of=AS_OF, labels=labels).params_
    label, day, allowed = _anchors(log, seq_cust, seq_asof, labels, p)
    # a: the latest label at or before the end (the one after it describes unseen days);
    # b: a label 3 days before the end describes day 3; c: no label
    assert label.tolist() == [0, 1, -1]  # stages sorted: customer, lead
    assert day[:2].tolist() == [0, 3]
    # states: customer_active, lead_active, customer_quiet, lead_quiet
    np.testing.assert_array_equal(allowed > 0.5, [[1, 0, 1, 0], [0, 1, 0, 1]])
    assert (allowed > 0).all()  # a mislabelled sequence stays possible
    none, _, _ = _anchors(log, seq_cust, seq_asof, None, p)
    assert (none == -1).all()


def test_anchoring_ties_the_states_to_the_labelled_stages() -> None:
    # two stages, each an active and a quiet state; the label is the true stage on the
    # last day
    rng = np.random.default_rng(21)
    truth = LatentParams(
        event_types=("page_view", "purchase"),
        state_names=("browser_active", "buyer_active", "browser_quiet", "buyer_quiet"),
        initial=np.array([0.6, 0.1, 0.2, 0.1]),
        transitions=np.array(
            [
                [0.95, 0.02, 0.03, 0.0],
                [0.02, 0.94, 0.0, 0.04],
                [0.04, 0.0, 0.96, 0.0],
                [0.0, 0.04, 0.0, 0.96],
            ]
        ),
        first_event=np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.8, 0.1, 0.1], [0.3, 0.6, 0.1]]),
        rates=np.array(
            [[0.8, 0.01, 0.02], [0.4, 0.3, 0.02], [0.05, 0.001, 0.01], [0.05, 0.02, 0.01]]
        ),
        activity_levels=np.array([1.0]),
        activity_weights=np.array([1.0]),
    )
    last: list[int] = []
    events = sample_hmm(rng, truth, 1_200, 150, last_states=last)
    stage = np.array(["browser", "buyer"])[np.array(last) % 2]
    labels = pd.DataFrame(
        {"customer_id": [f"c{i:05d}" for i in range(len(last))], "as_of": AS_OF, "stage": stage}
    )

    def accuracy(anchor: bool) -> float:
        model = LatentStateFeatures(activity_levels=(1.0,), max_iter=15, anchor_labels=anchor)
        feats = model.fit(events, as_of=AS_OF, labels=labels).transform(events, as_of=AS_OF)
        names = model.params_.state_names
        if anchor:  # the buyer states are the ones with the higher purchase rate
            purchase = model.params_.rates[:, model.params_.event_types.index("purchase")]
            assert purchase[names.index("buyer_active")] > purchase[names.index("browser_active")]
        buyer = [f"latent_state_{j}" for j, n in enumerate(names) if "buyer" in n]
        p_buyer = feats[buyer].sum(axis=1).reindex(labels["customer_id"]).to_numpy()
        return float(np.mean((p_buyer > 0.5) == (stage == "buyer")))

    # on a well-specified model anchoring costs nothing (the label noise keeps
    # mislabelled sequences possible); its gain is on misspecified ones, like the
    # benchmarks' semi-Markov funnels
    anchored, free = accuracy(True), accuracy(False)
    assert anchored > 0.88
    assert anchored >= free - 0.01
