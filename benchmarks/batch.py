"""Batch scoring throughput and memory from a raw event log (docs/scale.md, Batch).

Run ``python -m benchmarks.batch`` (10 million events, 200,000 customers) or
``python -m benchmarks.batch --large`` (50 million events, 1 million customers).

1. A raw event log is written as Parquet: the synthetic log of
   :func:`benchmarks.features.synthetic_log` (two years, sorted by time, so every
   customer's events are spread through the whole file), with string ids, UTC
   timestamps, event names and amounts, as a shop's export would have them.
2. A model is trained on a small simulated data set (2,000 customers,
   ``TrainConfig(max_rounds=50)``) into a throwaway MLflow store and registered.
3. ``lifecycle score --model models:/NAME/1`` runs as a child process, exactly as a batch
   job would, once on a small log (to fill Numba's cache: compilation is not timed)
   and then on the full log. Wall time includes the interpreter start, imports and
   model loading; the peak RSS is the child's own high-water mark (``ru_maxrss``).

With ``--in-memory-baseline`` the previous way of scoring (load the whole log with
``load_events``, build features, score) runs the same way, side by side.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.features import SPAN_DAYS, START, _machine, synthetic_log

AS_OF = (START + pd.Timedelta(days=SPAN_DAYS)).isoformat()
MODEL_NAME = "lifecycle-bench"
_SLICE = 1 << 20


def write_raw_log(path: Path, n_events: int, n_customers: int, *, seed: int) -> None:
    """Write the synthetic log as raw Parquet (strings and timestamps), in row groups."""
    events = synthetic_log(n_events, n_customers, seed=seed)
    ids = pa.array(events["customer_id"].cat.categories.to_numpy(dtype=object), pa.string())
    names = pa.array(events["event_type"].cat.categories.to_numpy(dtype=object), pa.string())
    codes = events["customer_id"].cat.codes.to_numpy()
    etypes = events["event_type"].cat.codes.to_numpy()
    times = events["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64) // 1000
    amount = events["amount"].to_numpy()
    del events
    schema = pa.schema(
        [
            ("customer_id", pa.string()),
            ("timestamp", pa.timestamp("us", tz="UTC")),
            ("event_type", pa.string()),
            ("amount", pa.float64()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, n_events, _SLICE):
            hi = min(lo + _SLICE, n_events)
            writer.write_table(
                pa.table(
                    {
                        "customer_id": ids.take(pa.array(codes[lo:hi])),
                        "timestamp": pa.array(times[lo:hi], pa.timestamp("us", tz="UTC")),
                        "event_type": names.take(pa.array(etypes[lo:hi])),
                        "amount": pa.array(amount[lo:hi], pa.float64(), from_pandas=True),
                    },
                    schema=schema,
                )
            )


def train_model(root: Path) -> dict[str, str]:
    """Train and register a small model; return the environment that finds it."""
    import mlflow
    from customer_lifecycle.simulator import write_dataset
    from customer_lifecycle.training.train import TrainConfig, train

    data = root / "sim"
    write_dataset(data, customers=2000, seed=3, as_of=["2024-12-31"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    here = Path.cwd()
    os.chdir(root)  # training writes nothing else, but keep it out of the repository
    try:
        train(
            data / "events.parquet",
            labels_path=data / "labels.csv",
            config=TrainConfig(max_rounds=50),
            register=MODEL_NAME,
            experiment="bench",
            say=lambda _: None,
        )
    finally:
        os.chdir(here)
    return {**os.environ, "MLFLOW_TRACKING_URI": uri}


def run_child(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    """Run a child process; return wall seconds, its peak RSS in bytes, and its output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{output}")
    return seconds, usage.ru_maxrss * 1024, output


def score_argv(events: Path, out: Path, chunk_customers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lifecycle",
        "score",
        "--events",
        str(events),
        "--model",
        f"models:/{MODEL_NAME}/1",
        "--as-of",
        AS_OF,
        "--out",
        str(out),
        "--chunk-customers",
        str(chunk_customers),
    ]


IN_MEMORY = textwrap.dedent(
    """
    import sys
    from customer_lifecycle.features.events import load_events
    from customer_lifecycle.features.sink import write_atomic
    from customer_lifecycle.scoring.pyfunc import load_bundle

    events_path, model, as_of, out = sys.argv[1:5]
    bundle = load_bundle(model)
    events, _ = load_events(events_path)
    feats = bundle.build_features(events, as_of=as_of)
    del events
    write_atomic(bundle.predict_features(feats), out)
    print(f"scored {len(feats):,} customers")
    """
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the log")
    parser.add_argument("--customers", type=int, default=200_000, help="customers in the log")
    parser.add_argument(
        "--large", action="store_true", help="50 million events over 1 million customers"
    )
    parser.add_argument(
        "--chunk-customers", type=int, default=50_000, help="lifecycle score --chunk-customers"
    )
    parser.add_argument(
        "--in-memory-baseline",
        action="store_true",
        help="also time loading the whole log and scoring it at once",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic log")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the log, model and scores here"
    )
    args = parser.parse_args(argv)
    n_events, n_customers = (50_000_000, 1_000_000) if args.large else (args.events, args.customers)

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parent.parent
        print(f"machine: {_machine()}")
        t0 = time.perf_counter()
        events = root / "events.parquet"
        write_raw_log(events, n_events, n_customers, seed=args.seed)
        size = events.stat().st_size / 2**20
        print(
            f"log: {n_events:,} events of {n_customers:,} customers, sorted by time, "
            f"{size:,.0f} MiB Parquet, written in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        env = train_model(root)
        print(f"model: trained on 2,000 simulated customers in {time.perf_counter() - t0:.1f} s")

        warm = root / "warm.parquet"
        write_raw_log(warm, 50_000, 1_000, seed=args.seed + 1)
        run_child(score_argv(warm, root / "warm-scores.parquet", 1000), env, repo)

        seconds, peak, output = run_child(
            score_argv(events, root / "scores.parquet", args.chunk_customers), env, repo
        )
        inside = re.search(r"in ([\d.]+) s", output)
        scored = pq.read_metadata(root / "scores.parquet").num_rows
        print()
        print(output.strip())
        print()
        rows = [("lifecycle score (streaming)", seconds, peak, inside and float(inside[1]))]
        if args.in_memory_baseline:
            base_s, base_peak, _ = run_child(
                [
                    sys.executable,
                    "-c",
                    IN_MEMORY,
                    str(events),
                    f"models:/{MODEL_NAME}/1",
                    AS_OF,
                    str(root / "scores-in-memory.parquet"),
                ],
                env,
                repo,
            )
            rows.append(("in memory (load all, score)", base_s, base_peak, None))
        head = (
            f"{'run':<30}{'wall s':>9}{'customers/min':>15}{'in score_file s':>17}"
            f"{'customers/min':>15}{'peak RSS':>12}"
        )
        print(head)
        print("-" * len(head))
        for name, wall, rss, inner in rows:
            inner_text = f"{inner:>17.1f}{scored / inner * 60:>15,.0f}" if inner else " " * 32
            print(
                f"{name:<30}{wall:>9.1f}{scored / wall * 60:>15,.0f}{inner_text}"
                f"{rss / 2**30:>10.2f} GiB"
            )
        print(
            f"\n{scored:,} customers scored. Wall time includes the interpreter start, imports "
            "and loading the model from MLflow; 'in score_file' is the time the command "
            "reports for reading, partitioning, validating, featurizing, scoring and writing. "
            "Targets: >= 1,000,000 customers per minute; peak RSS <= 4 GiB at 50 million events."
        )


if __name__ == "__main__":
    main()
