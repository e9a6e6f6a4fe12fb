"""The generator: reproducible files, and data that match the configured model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.simulator.config import ScenarioArrays, load_scenario
from customer_lifecycle.simulator.generate import simulate, write_dataset


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("fmt", "chunk_size"),
    [
        ("parquet", 250),  # several chunks: spill to week buckets, then external sort
        ("csv", 50_000),  # one chunk: sorted in memory
        ("jsonl", 400),  # several chunks, JSON lines
    ],
)
def test_same_seed_writes_same_bytes_and_other_seed_differs(
    tmp_path: Path, fmt: str, chunk_size: int
) -> None:
    kwargs = {"customers": 700, "fmt": fmt, "oracle": True, "chunk_size": chunk_size}
    write_dataset(tmp_path / "a", seed=3, **kwargs)  # type: ignore[arg-type]
    write_dataset(tmp_path / "b", seed=3, **kwargs)  # type: ignore[arg-type]
    write_dataset(tmp_path / "c", seed=4, **kwargs)  # type: ignore[arg-type]
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    names = {f"events.{fmt}", "labels.csv", "outcomes.csv", "oracle.csv", "metadata.json"}
    assert set(a) == names  # and no spill folder left behind
    assert a == b
    for name in (f"events.{fmt}", "labels.csv", "outcomes.csv", "oracle.csv"):
        assert a[name] != c[name], name


def test_written_files_follow_the_contract(tmp_path: Path) -> None:
    as_of = ["2024-06-01", "2024-09-01T00:00:00Z"]
    meta = write_dataset(
        tmp_path, customers=900, seed=1, as_of=as_of, horizon_days=60, chunk_size=300
    )
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert list(events.columns) == ["customer_id", "timestamp", "event_type", "amount", "channel"]
    assert str(events["timestamp"].dtype) == "datetime64[us, UTC]"
    assert events["timestamp"].is_monotonic_increasing
    assert events["customer_id"].str.fullmatch(r"c\d{7}").all()
    assert set(events["event_type"]) <= set(CANONICAL_EVENT_TYPES)
    money = events["event_type"].isin(["purchase", "refund"])
    assert (events.loc[money, "amount"] > 0).all()
    assert events.loc[~money, "amount"].isna().all()
    assert (events.loc[events["event_type"] == "email_open", "channel"] == "email").all()

    labels = pd.read_csv(tmp_path / "labels.csv")
    outcomes = pd.read_csv(tmp_path / "outcomes.csv")
    assert list(labels.columns) == ["customer_id", "stage", "as_of"]
    assert list(outcomes.columns) == ["customer_id", "as_of", "churned"]
    assert meta["as_of"] == ["2024-06-01T00:00:00+00:00", "2024-09-01T00:00:00+00:00"]
    for snapshot in meta["as_of"]:
        t = pd.Timestamp(snapshot)
        before = set(events.loc[events["timestamp"] < t, "customer_id"])
        lab = labels[labels["as_of"] == snapshot]
        assert set(lab["customer_id"]) == before
        window = events[
            (events["timestamp"] >= t) & (events["timestamp"] < t + pd.Timedelta(days=60))
        ]
        out = outcomes[outcomes["as_of"] == snapshot].set_index("customer_id")["churned"]
        np.testing.assert_array_equal(out.to_numpy(), ~out.index.isin(window["customer_id"]))
    # The simulation runs through the last outcome window.
    assert pd.Timestamp(meta["simulated_until"]) >= pd.Timestamp(meta["as_of"][-1]) + pd.Timedelta(
        days=60
    )
    saved = json.loads((tmp_path / "metadata.json").read_text())
    assert saved["counts"] == {"customers": 900, "events": len(events)}
    assert saved["seed"] == 1 and saved["scenario"] == "default"
    assert saved["parameters"]["transitions"]["advocacy"] == {"retention": 0.02}
    assert saved["package_version"]


def _state_distributions(a: ScenarioArrays, n_days: int) -> np.ndarray:
    """(n_days, 2S): distribution of (stage, active | dormant) m days after arrival."""
    n = len(a.stages)
    t = np.zeros((2 * n, 2 * n))
    t[:n, :n] = (1 - a.dormancy)[:, None] * a.move
    t[np.arange(n), n + np.arange(n)] = a.dormancy
    t[n:, n:] = np.eye(n)
    out = np.zeros((n_days, 2 * n))
    out[0, :n] = a.initial
    for m in range(1, n_days):
        out[m] = out[m - 1] @ t
    return out


@pytest.mark.parametrize(
    "scenario",
    [
        "default",  # retail, five stages
        "subscription",  # other parameters, same laws
    ],
)
def test_stage_occupancy_matches_the_configuration(scenario: str) -> None:
    as_of = ["2024-04-15", "2024-12-31"]
    data = simulate(scenario, customers=20_000, seed=2, as_of=as_of)
    a = data.plan.arrays
    n = len(a.stages)
    dist = _state_distributions(a, a.arrival_weights.size + 400)
    start = pd.Timestamp(str(a.start), tz="UTC")
    for snapshot in data.plan.as_of:
        last = (snapshot - start).days - 1  # label = stage on the last day before as_of
        ages = last - np.arange(a.arrival_weights.size)
        arrived = ages >= 0
        w = a.arrival_weights[arrived] / a.arrival_weights[arrived].sum()
        state = w @ dist[ages[arrived]]
        expected = state[:n] + state[n:]  # a dormant customer keeps its stage
        labels = data.labels[data.labels["as_of"] == snapshot.isoformat()]
        observed = labels["stage"].value_counts(normalize=True).reindex(a.stages, fill_value=0)
        # Binomial sampling error of each share, 5 standard errors.
        tolerance = 5 * np.sqrt(expected * (1 - expected) / len(labels))
        assert np.all(np.abs(observed.to_numpy() - expected) <= tolerance), (observed, expected)


def test_event_rates_match_the_configuration() -> None:
    data = simulate("default", customers=20_000, seed=4)
    a = data.plan.arrays
    n = len(a.stages)
    end = data.plan.end_day
    dist = _state_distributions(a, end + 1)
    active = dist[:, :n]
    # Expected active-day exposure per stage for each arrival day a: days a+1 .. end-1 in
    # full, plus the arrival day after the acquisition touch (half a day on average).
    cum = np.cumsum(active, axis=0)  # cum[m] = sum of active[0..m]
    exposure = np.zeros((a.arrival_weights.size, n))
    for day in range(a.arrival_weights.size):
        exposure[day] = cum[end - 1 - day] - active[0] + 0.5 * a.initial
    mean_activity = a.levels @ a.level_probs
    expected = (
        a.initial @ a.arrival_events + mean_activity * (a.arrival_weights @ exposure) @ a.rates
    )
    counts = pd.crosstab(data.events["customer_id"], data.events["event_type"]).reindex(
        columns=list(a.event_types), fill_value=0
    )
    assert len(counts) == 20_000  # every customer has its acquisition event
    observed = counts.mean().to_numpy()
    # Standard error of a mean of independent customers, 5 of them.
    tolerance = 5 * counts.std().to_numpy() / np.sqrt(len(counts)) + 1e-9
    bad = np.abs(observed - expected) > tolerance
    assert not bad.any(), dict(zip(np.asarray(a.event_types)[bad], observed[bad], strict=True))
    assert observed.sum() == pytest.approx(expected.sum(), rel=0.02)


def test_purchase_amounts_follow_the_configured_lognormal() -> None:
    data = simulate("subscription", customers=3000, seed=6)
    purchases = data.events.loc[data.events["event_type"] == "purchase", "amount"]
    sc = load_scenario("subscription")
    median = sc.amounts["purchase"].median
    assert isinstance(median, dict)
    logs = np.log(purchases.to_numpy())
    # Medians span 30 .. 120 by stage, sigma 0.35: the log amounts stay in that band.
    assert np.log(min(median.values())) - 2.0 < logs.mean() < np.log(max(median.values())) + 0.1
    assert len(purchases) > 500
