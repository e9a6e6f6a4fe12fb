"""Model quality against the best achievable (docs/scale.md), on data never tuned on.

1. A *fresh* scenario: the shipped one with every event rate, transition probability
   and dormancy hazard multiplied by a random factor (log-uniform in [1/2, 2], seeded),
   so no development run has seen it. The model is trained on it and its validation
   stage macro-F1 and churn ROC-AUC are compared with the Bayes-optimal oracle's on the
   same validation customers.
2. A purchase-only log: the same customers with every event but purchases removed;
   the churn head (``--qualifying purchases``) against BG/NBD and the other baselines.

Run: ``python -m benchmarks.quality [--customers 100000] [--seed 101] [--base default]``.
MLflow runs go to a temporary SQLite store.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def fresh_scenario(base: str, seed: int) -> Any:
    """The ``base`` scenario with rates, transitions and hazards perturbed at random."""
    from customer_lifecycle.simulator.config import load_scenario, scenario_from_dict

    rng = np.random.default_rng(seed)
    data = load_scenario(base).model_dump(mode="json")

    def jitter(x: float) -> float:
        return float(x * np.exp(rng.uniform(np.log(0.5), np.log(2.0))))

    data["name"] = f"{base}-perturbed-{seed}"
    data["rates"] = {s: {t: jitter(v) for t, v in r.items()} for s, r in data["rates"].items()}
    data["dormancy"] = {s: min(0.2, jitter(v)) for s, v in data["dormancy"].items()}
    moves = {}
    for stage, row in data["transitions"].items():
        new = {t: jitter(v) for t, v in row.items()}
        total = sum(new.values())
        moves[stage] = {t: v * 0.6 / total for t, v in new.items()} if total > 0.6 else new
    data["transitions"] = moves
    return scenario_from_dict(data, source=data["name"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--base", default="default", help="scenario to perturb")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="quality-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.chdir(work)
    from customer_lifecycle.simulator import dataset_oracle, write_dataset
    from customer_lifecycle.training.train import TrainConfig, train

    scenario = fresh_scenario(args.base, args.seed)
    sim = work / "sim"
    t0 = time.perf_counter()
    write_dataset(
        sim,
        scenario=scenario,
        customers=args.customers,
        seed=args.seed,
        as_of=["2024-09-30", "2024-12-31"],
    )
    print(
        f"scenario {scenario.name}: {args.customers:,} customers simulated in "
        f"{time.perf_counter() - t0:.0f} s ({work})"
    )

    t0 = time.perf_counter()
    oracle = dataset_oracle(sim / "events.parquet")
    print(f"oracle at every snapshot: {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    result = train(
        sim / "events.parquet",
        labels_path=sim / "labels.csv",
        oracle_predictions=oracle,
        say=lambda _: None,
    )
    seconds = time.perf_counter() - t0
    m = result.metrics
    print(f"training both heads: {seconds:.0f} s")
    print()
    print("| | model | oracle | ratio / gap | target |")
    print("|---|---|---|---|---|")
    print(
        f"| stage macro-F1 | {m['valid_stage_macro_f1']:.4f} | {m['oracle_stage_macro_f1']:.4f} "
        f"| {m['ratio_stage_macro_f1_to_oracle']:.3f} | >= 0.97 |"
    )
    print(
        f"| churn ROC-AUC | {m['valid_churn_roc_auc']:.4f} | {m['oracle_churn_roc_auc']:.4f} "
        f"| {m['gap_churn_roc_auc_to_oracle']:+.4f} | within 0.01 |"
    )
    print(
        f"| stage macro-F1, baselines | majority {m['baseline_majority_stage_macro_f1']:.4f} "
        f"| rulebook {m['baseline_rulebook_stage_macro_f1']:.4f} | | |"
    )

    events = pd.read_parquet(sim / "events.parquet")
    purchases = work / "purchases.parquet"
    events[events["event_type"] == "purchase"].to_parquet(purchases, index=False)
    only = train(
        purchases,
        as_of="2024-12-31",
        config=TrainConfig(qualifying="purchases"),
        say=lambda _: None,
    ).metrics
    print()
    print("purchase-only log, churn ROC-AUC (qualifying: purchases)")
    print("| model | BG/NBD | recency only | RFM logistic |")
    print("|---|---|---|---|")
    print(
        f"| {only['valid_churn_roc_auc']:.4f} | {only['baseline_bgnbd_churn_roc_auc']:.4f} "
        f"| {only['baseline_recency_churn_roc_auc']:.4f} "
        f"| {only['baseline_rfm_logistic_churn_roc_auc']:.4f} |"
    )


if __name__ == "__main__":
    main()
