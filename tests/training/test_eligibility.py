"""Enough data to train: the minimums, the report of ``lifecycle check``, and train's gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.training.eligibility import (
    Minimums,
    NotEnoughData,
    TrainingCounts,
    check_data,
    load_minimums,
    require_trainable,
    shortfalls,
)
from customer_lifecycle.training.train import TrainConfig, train

from tests.training.eligibility_logs import AS_OF, SIZES, edge_cases, metadata, simulated

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("eligibility")
    return {n: simulated(root, n) for n in SIZES}


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory, sims: dict[int, Path]) -> dict[str, Path]:
    return edge_cases(tmp_path_factory.mktemp("edges"), sims[600])


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MLflow store that a refused run must leave untouched."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(folder: Path) -> None:
    train(
        folder / "events.parquet",
        labels_path=folder / "labels.csv",
        config=TrainConfig(max_rounds=5),
        say=lambda _: None,
    )


# -- the minimums -------------------------------------------------------------------------


def counts(customers: int, stages: dict[str, int], churned: int | None, stayed: int | None):  # type: ignore[no-untyped-def]
    n = sum(stages.values())
    return TrainingCounts(n, customers, stages, churned, stayed)


def test_every_shortfall_is_named_with_its_count_and_need() -> None:
    found = shortfalls(counts(199, {"a": 19, "b": 20}, 20, 19), Minimums())
    assert found == [
        "199 customers with events before their snapshot (at least 200 needed)",
        "19 examples of stage 'a' (at least 20 needed)",
        "19 not-churned examples (at least 20 needed)",
    ]


def test_data_exactly_at_the_minimums_is_enough() -> None:
    assert shortfalls(counts(200, {"a": 20, "b": 20}, 20, 20), Minimums()) == []
    # the churn classes are not judged when the churn window cannot be observed
    assert shortfalls(counts(200, {"a": 20, "b": 20}, None, None), Minimums()) == []


def test_minimums_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_MIN_CUSTOMERS", "50")
    monkeypatch.setenv("LIFECYCLE_MIN_STAGE_EXAMPLES", "3")
    m = load_minimums()
    assert (m.customers, m.stage_examples, m.churn_examples) == (50, 3, 20)
    assert shortfalls(counts(50, {"a": 3, "b": 3}, 20, 20), m) == []


@pytest.mark.parametrize("value", ["many", "0"])  # not a number; below 1
def test_a_bad_minimum_setting_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LIFECYCLE_MIN_CHURN_EXAMPLES", value)
    with pytest.raises(ValueError, match="^LIFECYCLE_MIN_CHURN_EXAMPLES: ") as info:
        load_minimums()
    assert "\n" not in str(info.value)


def test_the_gate_is_one_line_listing_everything_missing() -> None:
    with pytest.raises(NotEnoughData) as info:
        require_trainable(counts(10, {"a": 3, "b": 30}, 0, 10), Minimums())
    message = str(info.value)
    assert message.startswith("not enough data to train: 10 customers")
    assert "3 examples of stage 'a' (at least 20 needed)" in message
    assert "0 churned examples" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)  # the command line's one-line error path


def test_counts_take_each_customer_once_and_each_snapshot_as_an_example() -> None:
    c = TrainingCounts.of(
        ["x", "x", "y"], ["a", "b", "b"], np.array([1, 0, 0]), stages=("a", "b", "c")
    )
    assert (c.snapshots, c.customers, c.stages, c.churned, c.stayed) == (
        3,
        2,
        {"a": 1, "b": 2, "c": 0},
        1,
        2,
    )


# -- the report on simulated shops ----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)  # a hundred, a few hundred, more customers
def test_report_counts_what_the_simulator_wrote(sims: dict[int, Path], size: int) -> None:
    folder = sims[size]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    (snap,) = metadata(folder)["snapshots"]
    lab = report.labels
    assert lab is not None
    # the simulator's own counts are the oracle: stages, customers, churn rate, events
    assert lab.counts.stages == {s: snap["stages"].get(s, 0) for s in STAGES}
    assert lab.counts.customers == snap["labelled_customers"] == size
    assert lab.counts.churned / lab.counts.snapshots == pytest.approx(snap["churn_rate"])
    assert report.events.load.rows_kept == metadata(folder)["counts"]["events"]
    raw = pd.read_parquet(folder / "events.parquet")
    bought = raw[raw["event_type"] == "purchase"]
    assert report.events.amounts["purchase"]["rows"] == len(bought)
    assert report.events.amounts["purchase"]["total"] == pytest.approx(bought["amount"].sum())
    assert report.events.event_types == raw["event_type"].value_counts().to_dict()
    # the verdict follows from those counts alone
    m = Minimums()
    enough = (
        size >= m.customers
        and min(snap["stages"].get(s, 0) for s in STAGES) >= m.stage_examples
        and min(lab.counts.churned, lab.counts.stayed) >= m.churn_examples  # type: ignore[type-var]
    )
    assert report.eligible == enough
    assert report.reasons == shortfalls(lab.counts, m)


def test_a_hundred_customers_are_refused_and_six_hundred_are_not(sims: dict[int, Path]) -> None:
    small = check_data(sims[100] / "events.parquet", labels_path=sims[100] / "labels.csv")
    assert "100 customers with events before their snapshot (at least 200 needed)" in (
        small.reasons
    )
    big = check_data(sims[600] / "events.parquet", labels_path=sims[600] / "labels.csv")
    assert big.eligible, big.reasons
    assert big.to_text().splitlines()[-1].startswith("verdict: eligible to train")


@pytest.mark.parametrize("size", [100, 300])  # too few customers; too few of some stages
def test_train_refuses_with_the_reasons_check_gives(
    sims: dict[int, Path], store: Path, size: int
) -> None:
    folder = sims[size]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    assert not report.eligible
    with pytest.raises(NotEnoughData) as info:
        _train(folder)
    assert "; ".join(report.reasons) in str(info.value)
    assert not (store / "mlflow.db").exists()  # refused before any tracking


def test_rulebook_labels_are_judged_at_as_of(sims: dict[int, Path]) -> None:
    report = check_data(sims[600] / "events.parquet", as_of=AS_OF)
    assert report.labels is not None
    assert report.labels.source.startswith("the rulebook at 2024-12-31")
    assert report.labels.counts.customers == 600
    assert sum(report.labels.counts.stages.values()) == 600


def test_without_a_snapshot_only_the_events_are_reported(sims: dict[int, Path]) -> None:
    report = check_data(sims[600] / "events.parquet")
    assert report.labels is None
    assert not report.eligible
    assert report.reasons[0].startswith("no snapshot to judge: pass --labels, or --as-of")
    json.dumps(report.to_dict())  # plain JSON values


# -- edge cases ------------------------------------------------------------------------------


def test_a_stage_without_labels_is_refused(edges: dict[str, Path], store: Path) -> None:
    folder = edges["no-stage"]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    assert report.reasons == ["0 examples of stage 'advocacy' (at least 20 needed)"]
    with pytest.raises(NotEnoughData, match="0 examples of stage 'advocacy'"):
        _train(folder)


def test_a_snapshot_after_the_log_ends_is_not_observable(
    edges: dict[str, Path], store: Path
) -> None:
    folder = edges["late-as-of"]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    assert report.labels is not None
    assert report.labels.counts.churned is None
    assert report.labels.per_snapshot["2025-06-30T00:00:00+00:00"]["churned"] is None
    assert len(report.reasons) == 1
    assert report.reasons[0].startswith("the churn horizon runs past the data")
    with pytest.raises(ValueError, match="the churn horizon runs past the data"):
        _train(folder)


def test_a_log_without_purchases_is_reported(edges: dict[str, Path]) -> None:
    folder = edges["no-purchases"]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    assert report.events.amounts["purchase"] == {"rows": 0, "with_amount": 0, "total": 0.0}
    assert report.warnings[0].startswith("no purchase events")
    assert report.eligible  # visits and logins still tell the stages and churn apart
    # but churn by purchases cannot be learned: nobody ever "stays"
    by_purchases = check_data(
        folder / "events.parquet", labels_path=folder / "labels.csv", qualifying="purchases"
    )
    assert by_purchases.reasons == ["0 not-churned examples (at least 20 needed)"]
    assert "--qualifying purchases every customer counts as churned" in by_purchases.warnings[0]


def test_every_customer_churned_is_refused(edges: dict[str, Path], store: Path) -> None:
    folder = edges["all-churned"]
    report = check_data(folder / "events.parquet", labels_path=folder / "labels.csv")
    assert report.labels is not None
    assert report.labels.counts.stayed == 0
    assert report.reasons == ["0 not-churned examples (at least 20 needed)"]
    with pytest.raises(NotEnoughData, match="0 not-churned examples"):
        _train(folder)


def test_unknown_stages_and_customers_without_history_are_reported(
    sims: dict[int, Path], tmp_path: Path
) -> None:
    labels = pd.read_csv(sims[600] / "labels.csv", dtype=str)
    extra = pd.DataFrame(
        {
            "customer_id": ["c0000001", "ghost"],
            "stage": ["VIP", "awareness"],
            "as_of": ["2024-09-30", AS_OF],
        }
    )
    path = tmp_path / "labels.csv"
    pd.concat([labels, extra]).to_csv(path, index=False)
    report = check_data(sims[600] / "events.parquet", labels_path=path)
    lab = report.labels
    assert lab is not None
    assert lab.unknown_stages == {"VIP": 1}
    assert lab.labelled == 602
    assert lab.counts.snapshots == 601  # the ghost has no events
    assert report.reasons[0].startswith("1 labels name stages outside the taxonomy ('VIP': 1)")
    assert any("1 labelled snapshot(s) have no events" in w for w in report.warnings)


def test_mapped_unknown_and_quarantined_events_are_itemised(tmp_path: Path) -> None:
    events = tmp_path / "shop.csv"
    events.write_text(
        "user,ts,name,value\n"
        "u1,2024-01-01T00:00:00Z,order_done,10.5\n"
        "u1,2024-01-02T00:00:00Z,order_done,\n"
        "u2,2024-01-03T00:00:00Z,teleport,\n"
        "u2,2024-01-04T00:00:00Z,teleport,\n"
        "u3,not a time,page_view,\n"
        "u3,2024-01-05T00:00:00Z,page_view,\n"
    )
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "columns: {customer_id: user, timestamp: ts, event_type: name, amount: value}\n"
        "event_types: {order_done: purchase}\n"
    )
    report = check_data(events, mapping=str(mapping))
    ev = report.events
    assert ev.event_types == {"purchase": 2, "page_view": 1}
    assert ev.mapped_from == {"purchase": ["order_done"]}
    assert ev.load.quarantined == {"unknown_event_type": 2, "unparseable_timestamp": 1}
    assert ev.unknown_quarantined == {"teleport": 2}
    assert ev.amounts["purchase"] == {"rows": 2, "with_amount": 1, "total": 10.5}
    assert ev.customers == 2
    assert "      by name: 'teleport': 2" in report.to_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapping.yaml", "shop.csv"]  # no file
    lenient = check_data(events, mapping=str(mapping), unknown_events="lenient")
    assert lenient.events.event_types["teleport"] == 2
    assert "unknown type, kept (lenient)" in lenient.to_text()
