"""Score store: writing a 1,000,000-customer run into SQLite, and lookups by id at a
constant 1,000 requests/s against a live ``lifecycle serve --store`` (docs/scale.md).

Run ``python -m benchmarks.store`` (a few minutes with the defaults). A scores file of
``--customers`` synthetic customers (the columns ``lifecycle score`` writes for a model
with a stage forecast and a value model: ``p_<stage>``, ``p_next_<stage>`` and the value
columns; ``--plain`` leaves the last two out; the scoring itself is measured by
``benchmarks.batch``) is written into a new SQLite store twice: the first run, then a
second one as of a month later, which also carries every customer's change times over
from the first. A page of a value tier's segment is timed on the second run. Then
``lifecycle serve --store`` starts on the store, without a model, and
``GET /v1/customers/{id}`` is sent open-loop at ``--rate`` for ``--duration`` seconds,
each request for a random customer id, by the load client of :mod:`benchmarks.serving`
(latency from each request's due time, no coordinated omission; ``Server-Timing`` gives
the time inside the server, the target's measure).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import serving as load

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")


#: Value tiers by share of customers, as the value model's default shares give them.
TIERS = (("top_1", 0.01), ("top_5", 0.04), ("top_10", 0.05), ("top_25", 0.15),
         ("top_50", 0.25), ("rest", 0.45), ("unknown", 0.05))  # fmt: skip


def scores_file(path: Path, customers: int, seed: int, *, plain: bool = False) -> Path:
    """A ``lifecycle score`` output of ``customers`` synthetic customers; unless ``plain``
    with the stage forecast and the value columns (5 % of customers without a value
    prediction)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(STAGES)), customers)
    churn = rng.beta(2, 3, customers)
    frame = pd.DataFrame(
        {
            "customer_id": [f"cust-{i:08d}" for i in range(customers)],
            "stage": np.asarray(STAGES)[probs.argmax(axis=1)],
            "churn_probability": churn,
            "churn_risk": np.where(churn < 0.3, "low", np.where(churn < 0.6, "medium", "high")),
        }
    )
    for i, stage in enumerate(STAGES):
        frame[f"p_{stage}"] = probs[:, i]
    if not plain:
        upcoming = rng.dirichlet(np.ones(len(STAGES)), customers)
        for i, stage in enumerate(STAGES):
            frame[f"p_next_{stage}"] = upcoming[:, i]
        names, shares = zip(*TIERS, strict=True)
        tier = rng.choice(np.asarray(names), customers, p=np.asarray(shares))
        known = tier != "unknown"
        purchases = rng.gamma(1.5, 2.0, customers)
        days = rng.integers(1, 365, customers)
        dates = (pd.Timestamp("2025-01-01") + pd.to_timedelta(days, unit="D")).strftime("%Y-%m-%d")
        frame["expected_purchases"] = np.where(known, purchases, np.nan)
        frame["expected_spend"] = np.where(
            known, purchases * rng.gamma(2.0, 30.0, customers), np.nan
        )
        frame["next_purchase_date"] = pd.Series(np.where(known, dates, None), dtype="str")
        frame["value_tier"] = tier
    frame.to_parquet(path, index=False)
    return path


class _Lookups(load.Target):
    """GET requests for random customer ids, pre-encoded, used in turn."""

    def __init__(self, url: str, key: str, ids: list[str]) -> None:
        super().__init__("GET /v1/customers/{id}", url, b"", {"Authorization": f"Bearer {key}"})
        host = url.split("://", 1)[1].split("/", 1)[0]
        auth = f"Authorization: Bearer {key}"
        self.requests = [
            f"GET /v1/customers/{i} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n".encode()
            for i in ids
        ]


class _LookupPool(load._Pool):
    """The load client's pool, sending the next request of the target's list each time."""

    def __init__(self, target: _Lookups, cap: int) -> None:
        self._next = itertools.cycle(target.requests)
        super().__init__(target, cap)

    @property  # type: ignore[override]
    def request(self) -> bytes:
        return next(self._next)

    @request.setter
    def request(self, value: bytes) -> None:  # the base class sets its one request
        pass


async def open_loop(t: _Lookups, rate: float, duration: float, server_pid: int) -> load.Result:
    """As :func:`benchmarks.serving.open_loop`, with a request per customer id."""
    pool = _LookupPool(t, cap=64)
    await pool.warm_up(connections=4, rounds=5)
    res = pool.use(load.Result(t.name, f"open {rate:g}/s", "open", asked_rate=rate))
    total = max(1, int(rate * duration))
    with load._measured(res, server_pid):
        start = time.perf_counter() + 0.01
        i = 0
        while i < total:
            due = start + i / rate
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(max(due - now, load.MIN_SLEEP_S))
                continue
            res.lateness_ms.append((now - due) * 1000.0)
            pool.submit(due)
            i += 1
        res.send_span_s = time.perf_counter() - start
        await pool.drain(load.DRAIN_TIMEOUT_S)
        res.elapsed_s = time.perf_counter() - start
    await pool.close()
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="Lookups per second.")
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds of lookups.")
    ap.add_argument("--workdir", type=Path, help="Keep the files here (default: a temp dir).")
    ap.add_argument(
        "--plain", action="store_true", help="Scores without the stage forecast and value."
    )
    args = ap.parse_args(argv)

    from customer_lifecycle.scoring.store import open_store, write_run
    from customer_lifecycle.scoring.store.queries import SegmentFilter, segment

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "store.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        files = [
            scores_file(work / f"run{k}.parquet", args.customers, k, plain=args.plain)
            for k in (1, 2)
        ]
        engine = open_store(db)
        what = "plain scores" if args.plain else "scores, stage forecast and value"
        print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; writing {what}")
        for k, (path, as_of) in enumerate(zip(files, ("2024-11-30", "2024-12-31"), strict=True)):
            t0 = time.perf_counter()
            run = write_run(engine, path, model_name="bench", model_version="1", as_of=as_of,
                            value_horizon_days=365)  # fmt: skip
            took = time.perf_counter() - t0
            print(
                f"write run {k + 1} ({what}): {run.customers:,} customers in {took:.1f} s "
                f"({run.customers / took:,.0f}/s; load {os.getloadavg()[0]:.2f})"
            )
        if not args.plain:
            with engine.connect() as conn:
                for tier in ("top_1", "rest"):
                    t0 = time.perf_counter()
                    page = segment(conn, SegmentFilter(value_tier=tier), limit=100)
                    took = (time.perf_counter() - t0) * 1000
                    print(
                        f"segment value_tier={tier}: a page of {len(page.items)} in {took:.1f} ms"
                    )
        engine.dispose()
        print(f"store size {db.stat().st_size / 1e6:,.0f} MB (2 runs)")

        key = "bench-key"
        port = load._free_port()
        env = {**os.environ, "LIFECYCLE_API_KEYS": key}
        cmd = [sys.executable, "-m", "customer_lifecycle", "serve", "--store", str(db)]
        cmd += ["--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        rng = np.random.default_rng(0)
        ids = [f"cust-{i:08d}" for i in rng.integers(0, args.customers, 200_000)]
        with load.running(cmd, f"{base}/healthz", env, work / "server.log") as proc:
            res = load._run(open_loop(_Lookups(base, key, ids), args.rate, args.duration, proc.pid))
        print(load.HEADER)
        print(res.row())
        print(res.detail())


if __name__ == "__main__":
    main()
