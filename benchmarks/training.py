"""Training time and memory on a large simulated log (docs/scale.md, Training).

Run ``python -m benchmarks.training`` (100,000 customers labelled at one snapshot, the
target: both heads in at most 2 minutes) or ``--customers N`` for another size.

1. ``write_dataset`` simulates the customers (not timed) into a temporary folder.
2. ``train()`` runs exactly as ``lifecycle train`` runs it (loading, features, the
   latent-stage model, cross-fitting, the refit on every label, baselines, the value
   models, plots and MLflow logging into a throwaway SQLite store), once, with every
   line it says stamped with the seconds since the start, so the phases can be read
   off.
3. The figures: wall time of ``train()`` and the process's peak RSS (``ru_maxrss``,
   which includes the simulation before it: the simulator is chunked and stays well
   below training's peak).

There is no baseline to run side by side: the target is absolute.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.train import TrainConfig, train

from benchmarks.quality import config_options

TARGET_SECONDS = 120.0
AS_OF = "2024-12-31"


def run(
    customers: int,
    seed: int,
    *,
    latent_states: bool = True,
    options: dict[str, Any] | None = None,
) -> float:
    """Simulate, then time one ``train()``; return its wall time in seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_dataset(root / "data", customers=customers, seed=seed, as_of=[AS_OF])
        print(f"simulated {customers:,} customers in {time.perf_counter() - started:.0f} s")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        os.chdir(root)  # the default experiment's artifacts land in the throwaway folder

        t0 = time.perf_counter()

        def say(line: str) -> None:
            print(f"[{time.perf_counter() - t0:6.1f} s] {line}", flush=True)

        train(
            root / "data" / "events.parquet",
            labels_path=root / "data" / "labels.csv",
            config=TrainConfig(latent_states=latent_states, **(options or {})),
            say=say,
        )
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--no-latent-states", action="store_true", help="train without the latent-stage model"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a TrainConfig field (integers parsed), e.g. churn_history=0",
    )
    args = parser.parse_args()
    try:
        options = config_options(args.config)
    except ValueError as exc:
        parser.error(str(exc))
    load = os.getloadavg()[0]
    seconds = run(
        args.customers, args.seed, latent_states=not args.no_latent_states, options=options
    )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    minutes, rest = divmod(seconds, 60)
    verdict = "met" if seconds <= TARGET_SECONDS else "not met"
    print(
        f"train(): {args.customers:,} customers in {int(minutes)} min {rest:.0f} s "
        f"(target {TARGET_SECONDS:.0f} s: {verdict}), peak RSS {peak_gib:.2f} GiB, "
        f"load average at the start {load:.1f}"
    )


if __name__ == "__main__":
    main()
