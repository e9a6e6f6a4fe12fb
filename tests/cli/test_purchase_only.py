"""Purchase-only logs end to end through the real CLI: check, train, score.

The log is drawn from the BG/NBD story with numpy (each customer buys at a Poisson rate
of their own and may drop out after each purchase; amounts from a Gamma of their own):
only ``purchase`` events, no browsing at all, so every customer in it has bought. It
runs to 2025-07-01; models are trained at ``T`` (the churn window and the value's
held-out time need history on both sides) and score the log cut at ``T``, so what the
customers bought after ``T`` is what the scores are judged on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from customer_lifecycle.cli import app

pytestmark = pytest.mark.slow  # two training runs (one with the latent model's EM)

runner = CliRunner()
T = "2024-12-31"
END = "2025-07-01"
TIERS = {"top_1", "top_5", "top_10", "top_25", "top_50", "rest"}
# the shipped rulebook labels a purchase-only log purchase (one purchase day) or
# retention (two or more); this taxonomy names exactly those two groups, with the
# default stage names as synonyms so that the shipped rulebook fits it
TWO_STAGES = """\
stages:
  - name: one_time
    synonyms: [awareness, consideration, purchase]
  - name: repeat
    synonyms: [retention, advocacy]
"""


@dataclass(frozen=True)
class Log:
    folder: Path
    full: Path  # every purchase up to END, with amounts
    cut: Path  # purchases before T, with amounts
    cut_no_amounts: Path  # the same without the amount column
    full_no_amounts: Path
    taxonomy: Path
    later: pd.Series  # purchases in [T, END) per customer (0 when none)
    purchase_days: pd.Series  # distinct purchase days before T per customer


def _bgnbd_log(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2022-01-01", tz="UTC")
    span = (pd.Timestamp(END, tz="UTC") - start).days
    first = rng.uniform(0, span - 200, n)  # every customer's first purchase is before T
    rate = rng.gamma(0.8, 1 / 25.0, n)  # purchases per day while active
    drop = rng.beta(1.0, 6.0, n)  # chance of dropping out after each purchase
    basket = rng.gamma(4.0, 15.0, n)  # each customer's mean spend per purchase
    rows: list[tuple[str, float, float]] = []
    for i in range(n):
        t = first[i]
        while t < span:
            rows.append((f"c{i:05d}", t, round(float(rng.gamma(6.0, basket[i] / 6.0)), 2)))
            if rng.random() < drop[i]:
                break
            t += rng.exponential(1 / rate[i])
    frame = pd.DataFrame(rows, columns=["customer_id", "day", "amount"])
    when = start + pd.to_timedelta(frame["day"], unit="D")
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"],
            "timestamp": when.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event_type": "purchase",
            "amount": frame["amount"],
            "_when": when,
        }
    )


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    folder = tmp_path_factory.mktemp("purchase-only")
    events = _bgnbd_log(2000, seed=7)
    before = events["_when"] < pd.Timestamp(T, tz="UTC")
    columns = ["customer_id", "timestamp", "event_type", "amount"]
    paths = {
        "full": (events, columns),
        "cut": (events[before], columns),
        "cut_no_amounts": (events[before], columns[:3]),
        "full_no_amounts": (events, columns[:3]),
    }
    for name, (frame, cols) in paths.items():
        frame[cols].to_csv(folder / f"{name}.csv", index=False)
    customers = events.loc[before, "customer_id"].unique()
    later = events[~before].groupby("customer_id").size().reindex(customers, fill_value=0)
    days = (
        events[before]
        .assign(day=events.loc[before, "_when"].dt.floor("D"))
        .groupby("customer_id")["day"]
        .nunique()
    )
    (folder / "two-stages.yaml").write_text(TWO_STAGES)
    return Log(
        folder,
        folder / "full.csv",
        folder / "cut.csv",
        folder / "cut_no_amounts.csv",
        folder / "full_no_amounts.csv",
        folder / "two-stages.yaml",
        later,
        days,
    )


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("purchase-only-mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        mp.chdir(folder)  # the default experiment's artifacts land here
        yield folder


def _train(*args: str) -> str:
    result = runner.invoke(app, ["train", "--as-of", T, *args])
    assert result.exit_code == 0, result.output
    assert "stage labels come from the rulebook" in result.stderr
    found = re.search(r"^model URI: (\S+)$", result.stdout, flags=re.M)
    assert found, result.stdout
    return found.group(1)


def _score(model: str, events: Path, out: Path) -> pd.DataFrame:
    result = runner.invoke(
        app, ["score", "--events", str(events), "--model", model, "--as-of", T, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"customer_id": str, "next_purchase_date": str})


@pytest.fixture(scope="module")
def with_amounts(log: Log, tracking: Path) -> pd.DataFrame:
    """Defaults (latent model on, churn = no event at all): the log has only purchases."""
    model = _train("--events", str(log.full), "--taxonomy", str(log.taxonomy))
    return _score(model, log.cut, tracking / "scores-amounts.csv")


@pytest.fixture(scope="module")
def without_amounts(log: Log, tracking: Path) -> pd.DataFrame:
    model = _train(
        "--events",
        str(log.full_no_amounts),
        "--taxonomy",
        str(log.taxonomy),
        "--qualifying",
        "purchases",
        "--no-latent-states",
    )
    return _score(model, log.cut_no_amounts, tracking / "scores-no-amounts.csv")


# -- check --------------------------------------------------------------------------------


def test_check_says_why_the_default_stages_cannot_be_learned(log: Log) -> None:
    result = runner.invoke(app, ["check", "--events", str(log.full), "--as-of", T])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    types = lines[lines.index("  events per type:") + 1].split()
    assert types == ["purchase", f"{len(pd.read_csv(log.full)):,}"]
    stages = next(line for line in lines if line.lstrip().startswith("stages"))
    # the rulebook gives purchase and retention only: nobody browsed, reviewed or referred
    assert "awareness 0 / 0" in stages and "consideration 0 / 0" in stages
    assert "advocacy 0 / 0" in stages
    n_one = int((log.purchase_days == 1).sum())
    assert f"purchase {n_one:,} / {n_one:,}" in stages
    verdict = lines[-1]
    assert verdict.startswith("verdict: not eligible to train")
    for stage in ("awareness", "consideration", "advocacy"):
        assert f"0 examples of stage '{stage}'" in verdict
    # and it says why, with the way out
    assert any(
        line.startswith("warning: the log holds purchase events only") and "--labels" in line
        for line in lines
    )


@pytest.mark.parametrize("qualifying", ["any", "purchases"])
def test_check_with_a_two_stage_taxonomy_says_trainable(log: Log, qualifying: str) -> None:
    result = runner.invoke(
        app,
        [
            "check",
            *("--events", str(log.full), "--as-of", T, "--taxonomy", str(log.taxonomy)),
            *("--qualifying", qualifying),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    n_one = int((log.purchase_days == 1).sum())
    n_repeat = int((log.purchase_days >= 2).sum())
    assert f"  stages (with history / labelled): one_time {n_one:,} / {n_one:,}, " in "\n".join(
        lines
    )
    assert f"repeat {n_repeat:,} / {n_repeat:,}" in result.stdout
    assert lines[-1].startswith("verdict: eligible to train")


def test_check_with_a_label_file_of_crm_stages(log: Log) -> None:
    # a CRM's own stages for the same customers: any two stages the taxonomy names work
    labels = pd.DataFrame({"customer_id": log.purchase_days.index})
    rank = log.purchase_days.rank(method="first").to_numpy()
    labels["stage"] = np.where(rank > len(rank) / 3, "retention", "purchase")
    path = log.folder / "labels.csv"
    labels.to_csv(path, index=False)
    args = ["check", "--events", str(log.full), "--labels", str(path), "--as-of", T]
    default = runner.invoke(app, args)
    assert default.exit_code == 1  # the default taxonomy still wants all five stages
    assert "0 examples of stage 'awareness'" in default.stdout.splitlines()[-1]
    two = runner.invoke(app, [*args, "--taxonomy", str(log.taxonomy)])
    assert two.exit_code == 0, two.output
    assert "labels: " in two.stdout and "rulebook" not in two.stdout.split("labels: ")[1][:60]


# -- train and score ----------------------------------------------------------------------


def _spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))


def _assert_scores_are_sensible(scores: pd.DataFrame, log: Log, *, amounts: bool) -> None:
    # every customer of the cut log is scored, once
    assert sorted(scores["customer_id"]) == sorted(log.later.index)
    assert scores.columns[-4:].tolist() == [
        "expected_purchases",
        "expected_spend",
        "next_purchase_date",
        "value_tier",
    ]
    scores = scores.set_index("customer_id")
    later = log.later.reindex(scores.index)
    purchases = scores["expected_purchases"]
    assert np.isfinite(purchases).all() and (purchases > 0).all()
    # who buys more after T was expected to (the value horizon is 365 days, the window
    # 182: ranks, not counts, are compared)
    assert _spearman(purchases, later) > 0.45
    spend = scores["expected_spend"]
    if amounts:
        assert np.isfinite(spend).all() and (spend > 0).all()
        assert _spearman(spend, later) > 0.4
    else:
        assert spend.isna().all()
    # every customer has bought, so nobody is "unknown"; tiers hold about their shares
    assert set(scores["value_tier"]) <= TIERS
    top = scores["value_tier"].isin(["top_1", "top_5", "top_10"]).mean()
    assert 0.07 <= top <= 0.13
    order = ["top_1", "top_5", "top_10", "top_25", "top_50", "rest"]
    ranked = scores["value_tier"].map(order.index)
    key = spend if amounts else purchases
    assert _spearman(-ranked, key) > 0.8  # tiers follow the served value
    # dates: after T where BG/NBD expects another purchase; the customers given a date
    # bought more later than those given none
    dated = scores["next_purchase_date"].notna()
    assert 0.2 < dated.mean() < 1.0
    assert (pd.to_datetime(scores.loc[dated, "next_purchase_date"]) >= pd.Timestamp(T)).all()
    assert later[dated].mean() > 2 * later[~dated].mean()
    # stages: the rulebook's two groups, learned
    repeat = log.purchase_days.reindex(scores.index) >= 2
    assert ((scores["stage"] == "repeat") == repeat).mean() > 0.99
    # churn (no purchase in the 90 days after T): the probability ranks who stopped
    churned = ~_bought_within(log, scores.index, days=90)
    assert 0.3 < churned.mean() < 0.95
    assert _auc(scores["churn_probability"], churned) > 0.8


def _bought_within(log: Log, customers: pd.Index, *, days: int) -> pd.Series:
    full = pd.read_csv(log.full, usecols=["customer_id", "timestamp"], dtype=str)
    when = pd.to_datetime(full["timestamp"], utc=True)
    start = pd.Timestamp(T, tz="UTC")
    inside = (when >= start) & (when < start + pd.Timedelta(days=days))
    buyers = set(full.loc[inside, "customer_id"])
    return pd.Series([c in buyers for c in customers], index=customers)


def _auc(score: pd.Series, positive: pd.Series) -> float:
    ranks = score.rank().to_numpy()
    pos = positive.to_numpy()
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_trains_and_scores_a_purchase_only_log_with_amounts(
    with_amounts: pd.DataFrame, log: Log
) -> None:
    _assert_scores_are_sensible(with_amounts, log, amounts=True)
    assert {"p_one_time", "p_repeat", "p_next_one_time", "p_next_repeat"} <= set(with_amounts)


def test_trains_and_scores_without_amounts_and_with_purchases_as_qualifying(
    without_amounts: pd.DataFrame, log: Log
) -> None:
    _assert_scores_are_sensible(without_amounts, log, amounts=False)
    assert not any(c.startswith("p_next_") for c in without_amounts)
