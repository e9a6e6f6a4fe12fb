"""HTTP API latency and throughput against ``mlflow models serve`` (SPEC §10, API).

Run ``python -m benchmarks.serving`` (about two minutes with the defaults). Without
``--model`` a small demo model is simulated, trained and registered in a temporary
MLflow store first; with ``--model models:/NAME@champion`` the store of
``MLFLOW_TRACKING_URI`` (or ``./mlflow.db``) is used.

Both servers run as subprocesses on loopback ports: ours (``lifecycle serve``) and
``mlflow models serve -m <uri> --env-manager local`` on the same registered model. The
payload is one customer with 50 events (ours builds the features) or that customer's
precomputed features (ours at ``/v1/scores/features`` and MLflow's ``/invocations``,
which takes features only).

Load is open-loop: request ``i`` is due at ``start + i / rate`` whatever happened to
earlier requests, and its latency counts from that due time, so a slow server cannot
hide latency by slowing the client down (no coordinated omission). A short closed-loop
phase then sends back-to-back requests from ``--concurrency`` connections to measure
the most each server sustains. Ours reports its own time per request in the
``Server-Timing`` header (arrival of the request to its response headers): that is the
"inside the server" latency of the targets. The client shares the machine with the
servers; at high rates it is the client, a Python process, that limits first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

KEY = "benchmark-key"
AS_OF = "2024-12-31"


@dataclass
class Target:
    """One server endpoint and the request body it is sent."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Result:
    target: str
    mode: str
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def row(self) -> str:
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.asarray([math.nan])
        srv = np.asarray(self.server_ms) if self.server_ms else np.asarray([math.nan])
        p = np.percentile(lat, [50, 95, 99])
        s = np.percentile(srv, [50, 95, 99])
        errors = sum(self.errors.values())
        detail = ",".join(f"{k}:{v}" for k, v in sorted(self.errors.items()))
        return (
            f"{self.target:<22} {self.mode:<11} {self.sent:>6} {errors:>6} "
            f"{p[0]:>8.2f} {p[1]:>8.2f} {p[2]:>8.2f} {self.ok / self.elapsed_s:>9.0f} "
            f"{s[0]:>7.2f} {s[1]:>7.2f} {s[2]:>7.2f}  {detail}"
        )


HEADER = (
    f"{'target':<22} {'mode':<11} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'ok/s':>9} {'srv p50':>7} {'srv p95':>7} {'srv p99':>7}"
)


# -- load generation ---------------------------------------------------------------------


async def _one(client: httpx.AsyncClient, t: Target, due: float, res: Result) -> None:
    try:
        r = await client.post(t.url, content=t.body, headers=t.headers)
    except httpx.HTTPError as exc:
        key = type(exc).__name__
        res.errors[key] = res.errors.get(key, 0) + 1
        return
    done = time.perf_counter()
    if r.status_code != 200:
        res.errors[str(r.status_code)] = res.errors.get(str(r.status_code), 0) + 1
        return
    res.ok += 1
    res.latency_ms.append((done - due) * 1000.0)
    timing = r.headers.get("server-timing", "")
    if "dur=" in timing:
        res.server_ms.append(float(timing.split("dur=")[1].split(",")[0]))


async def open_loop(t: Target, rate: float, duration: float) -> Result:
    """``rate * duration`` requests, each sent at its due time, latency from that time."""
    res = Result(t.name, f"open {rate:g}/s")
    total = int(rate * duration)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(20):  # warm-up, not counted
            await client.post(t.url, content=t.body, headers=t.headers)
        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, t, due, res)))
            res.sent += 1
        await asyncio.gather(*tasks)
        res.elapsed_s = time.perf_counter() - start
    return res


async def closed_loop(t: Target, concurrency: int, duration: float) -> Result:
    """Back-to-back requests from ``concurrency`` connections: the sustained maximum."""
    res = Result(t.name, f"closed x{concurrency}")
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                res.sent += 1
                await _one(client, t, time.perf_counter(), res)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.elapsed_s = time.perf_counter() - start
    return res


# -- servers ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, env: dict[str, str], log: Path) -> Iterator[None]:
    """Start ``cmd``, wait until ``ready_url`` answers 200, stop it with SIGTERM at the end."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} never became ready; see {log}")
                time.sleep(0.25)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- model and payload ----------------------------------------------------------------------


def demo_model(workdir: Path) -> str:
    """Simulate a shop, train a small model into a store under ``workdir``; its URI."""
    from simulator import write_dataset
    from training.train import TrainConfig, train

    data = workdir / "data"
    write_dataset(data, customers=3000, seed=3, as_of=[AS_OF])
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        train(
            data / "events.parquet",
            labels_path=data / "labels.csv",
            config=TrainConfig(max_rounds=200),
            register="bench",
            promote_if_better=True,
            say=lambda _: None,
        )
    finally:
        os.chdir(cwd)
    return "models:/bench@champion"


def payloads(
    model: str, events_per_customer: int
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """One customer with ``events_per_customer`` events (JSON body) and their features."""
    from features.engine import build_features
    from scoring.pyfunc import load_bundle
    from simulator import write_dataset

    bundle = load_bundle(model)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), customers=300, seed=11, as_of=[AS_OF])
        events = pd.read_parquet(Path(tmp) / "events.parquet")
    events = events[events["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")]
    counts = events["customer_id"].value_counts()
    cid = str(counts.index[0])
    rows = events[events["customer_id"] == cid].tail(events_per_customer)
    if len(rows) < events_per_customer:  # repeat the history, shifted back, to reach the size
        reps = math.ceil(events_per_customer / len(rows))
        rows = pd.concat(
            [
                rows.assign(timestamp=rows["timestamp"] - pd.Timedelta(days=400 * k))
                for k in range(reps)
            ]
        ).tail(events_per_customer)
    body = {
        "as_of": f"{AS_OF}T00:00:00Z",
        "customers": [
            {
                "customer_id": cid,
                "events": [
                    {
                        "timestamp": ts.isoformat(),
                        "event_type": str(kind),
                        **({"amount": float(amount)} if amount == amount else {}),
                    }
                    for ts, kind, amount in zip(
                        rows["timestamp"], rows["event_type"], rows["amount"], strict=True
                    )
                ],
            }
        ],
    }
    feats = build_features(rows, as_of=AS_OF, definition=bundle.definition).iloc[0]
    return body, {str(k): (None if math.isnan(v) else float(v)) for k, v in feats.items()}


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", help="Model URI; default: train a small demo model first.")
    ap.add_argument("--rate", type=float, default=50.0, help="Open-loop requests per second.")
    ap.add_argument("--duration", type=float, default=15.0, help="Seconds of open-loop load.")
    ap.add_argument("--concurrency", type=int, default=8, help="Closed-loop connections.")
    ap.add_argument(
        "--closed-duration", type=float, default=5.0, help="Seconds of closed-loop load (0: skip)."
    )
    ap.add_argument("--events", type=int, default=50, help="Events of the scored customer.")
    ap.add_argument("--skip-mlflow", action="store_true", help="Only benchmark our server.")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model = args.model or demo_model(work)
        body, features = payloads(model, args.events)
        env = {
            **os.environ,
            # mlflow models serve starts `uvicorn` by name: the venv's bin must be on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LIFECYCLE_API_KEYS": KEY,
            "LIFECYCLE_RELOAD_INTERVAL_SECONDS": "0",
            "LIFECYCLE_MAX_IN_FLIGHT": "256",
            "LIFECYCLE_LOG_LEVEL": "warning",
        }
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        ours_port = _free_port()
        ours = f"http://127.0.0.1:{ours_port}"
        features_body = {"customers": [{"customer_id": "c", "features": features}]}
        targets = [
            Target("ours /v1/scores", f"{ours}/v1/scores", json.dumps(body).encode(), auth),
            Target(
                "ours /v1/scores/feat.",
                f"{ours}/v1/scores/features",
                json.dumps(features_body).encode(),
                auth,
            ),
        ]
        print(f"model {model}; one customer, {args.events} events; machine: {os.cpu_count()} CPUs")
        print(HEADER)
        serve = [sys.executable, "-c", "from lifecycle.cli import app; app()"]
        cmd = [*serve, "serve", "--model", model, "--port", str(ours_port)]
        with running(cmd, f"{ours}/readyz", env, work / "ours.log"):
            for t in targets:
                _run_target(t, args)
        if not args.skip_mlflow:
            mlflow_port = _free_port()
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
            split = {  # the pyfunc signature has customer_id first
                "dataframe_split": {
                    "columns": ["customer_id", *features],
                    "data": [["c", *features.values()]],
                }
            }
            target = Target(
                "mlflow /invocations",
                f"{mlflow_url}/invocations",
                json.dumps(split).encode(),
                {"Content-Type": "application/json"},
            )
            cmd = [
                mlflow_cli, "models", "serve", "-m", model, "--env-manager", "local",
                "--host", "127.0.0.1", "-p", str(mlflow_port),
            ]  # fmt: skip
            with running(cmd, f"{mlflow_url}/ping", env, work / "mlflow.log"):
                _run_target(target, args)


def _run_target(t: Target, args: argparse.Namespace) -> None:
    print(asyncio.run(open_loop(t, args.rate, args.duration)).row(), flush=True)
    if args.closed_duration > 0:
        print(asyncio.run(closed_loop(t, args.concurrency, args.closed_duration)).row(), flush=True)


if __name__ == "__main__":
    main()
