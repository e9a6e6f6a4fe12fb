"""Feature engine throughput against pandas, Polars and DuckDB baselines (docs/scale.md, Features).

Run ``python -m benchmarks.features`` (10 million events, 100,000 customers) or
``python -m benchmarks.features --large`` (50 million events, 1 million customers).
A synthetic canonical log is generated in memory, the numba JIT is warmed up on a
small slice (so compilation is not timed), then the engine and the baselines run side
by side in this process on the full default feature definition: the pandas group-by of
:mod:`benchmarks.pandas_features`, the Polars lazy query of
:mod:`benchmarks.polars_features` and the DuckDB SQL of :mod:`benchmarks.duckdb_features`
(``--baselines`` picks them). Each baseline takes the pandas frame and returns a pandas
frame, as the engine does, and the conversions are timed; Polars and DuckDB use their
default thread pools (one thread per core). At ``--large`` the baselines run on a
customer subsample of about 10 million events, and so does the engine once more, for a
like-for-like ratio.

Peak memory is the rise of the process's resident set (RSS) above its level just
before each call: the kernel's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) where allowed, else a sampling thread on ``VmRSS``.
tracemalloc is not used because it misses memory numba and NumPy allocate in C.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import importlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features

#: Baselines by name: the module holding ``<name>_features``, the library it needs, and
#: the label of its row in the table.
BASELINES: dict[str, tuple[str, str, str]] = {
    "pandas": ("benchmarks.pandas_features", "pandas", "pandas group-by"),
    "polars": ("benchmarks.polars_features", "polars", "polars lazy group-by"),
    "duckdb": ("benchmarks.duckdb_features", "duckdb", "duckdb SQL"),
}

START = pd.Timestamp("2023-01-01", tz="UTC")
SPAN_DAYS = 730
_DAY_NS = 86_400 * 10**9

#: Relative frequency of each event type: browsing dominates, money is rare.
TYPE_WEIGHTS: dict[str, float] = {
    "ad_click": 4.0,
    "social_visit": 2.0,
    "search_visit": 3.0,
    "page_view": 28.0,
    "content_view": 8.0,
    "product_view": 14.0,
    "search": 6.0,
    "comparison": 1.0,
    "wishlist_add": 1.0,
    "add_to_cart": 4.0,
    "remove_from_cart": 1.0,
    "checkout_start": 2.0,
    "purchase": 2.0,
    "refund": 0.2,
    "onboarding_step": 0.5,
    "email_open": 8.0,
    "email_click": 2.0,
    "newsletter_signup": 0.3,
    "appointment_booked": 0.2,
    "demo_request": 0.1,
    "login": 7.0,
    "support_ticket": 0.5,
    "survey_response": 0.3,
    "promo_redeemed": 0.5,
    "review": 0.3,
    "referral": 0.1,
    "social_share": 0.3,
    "loyalty_join": 0.1,
    "unsubscribe": 0.2,
}


def synthetic_log(n_events: int, n_customers: int, *, seed: int = 0) -> pd.DataFrame:
    """A canonical event log over two years, sorted by time, built with vectorised NumPy.

    Customers differ in activity (lognormal weights) and in when they arrive (uniform
    over the first 90 % of the span); each customer's events are spread uniformly
    from arrival to the end. Purchases and refunds carry lognormal amounts.
    """
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_customers)
    per_customer = rng.multinomial(n_events, activity / activity.sum())
    codes = np.repeat(np.arange(n_customers, dtype=np.int32), per_customer)
    del per_customer
    span_s = SPAN_DAYS * 86_400.0
    arrival = rng.uniform(0.0, 0.9 * span_s, n_customers)[codes]
    seconds = arrival + rng.random(n_events) * (span_s - arrival)
    del arrival
    t = START.value + (seconds * 1e3).astype(np.int64) * 10**6  # millisecond resolution
    del seconds
    order = np.argsort(t, kind="stable")
    t = t[order]
    codes = codes[order]
    del order

    names = list(TYPE_WEIGHTS)
    assert set(names) == set(CANONICAL_EVENT_TYPES)
    weights = np.array([TYPE_WEIGHTS[n] for n in names])
    etype = rng.choice(len(names), size=n_events, p=weights / weights.sum()).astype(np.int8)
    amount = np.full(n_events, np.nan)
    for name, mu in (("purchase", 3.6), ("refund", 3.3)):
        rows = np.flatnonzero(etype == names.index(name))
        amount[rows] = np.round(rng.lognormal(mu, 0.8, rows.size), 2)

    ids = np.array([f"c{i:07d}" for i in range(n_customers)], dtype=object)
    return pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(codes, categories=pd.Index(ids)),
            "timestamp": pd.DatetimeIndex(t.view("datetime64[ns]")).tz_localize("UTC"),
            "event_type": pd.Categorical.from_codes(etype, categories=pd.Index(names)),
            "amount": amount,
        },
        copy=False,
    )


# -- measuring -------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS, so that RSS before a run is its true level."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    # A fixed mmap threshold (M_MMAP_THRESHOLD = -3) stops glibc from raising it after
    # large frees, so big arrays are mapped and unmapped rather than kept in the heap,
    # where a later run would reuse them without any visible rise in RSS.
    libc.mallopt(-3, 128 * 1024)
    return libc


class PeakRSS:
    """Peak resident memory above the level at entry, in bytes (``increase``)."""

    def __init__(self) -> None:
        self.increase = 0
        self.method = ""
        self._stop = threading.Event()
        self._sampled = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "VmRSS sampled every 5 ms"
        self._base = self._sampled = _status_kib("VmRSS")
        if self.method != "VmHWM":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _status_kib("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            peak = max(self._sampled, _status_kib("VmRSS"))
        else:
            peak = _status_kib("VmHWM")
        self.increase = (peak - self._base) * 1024


@dataclass
class Result:
    name: str
    events: int
    rows: int
    seconds: list[float]
    peak_bytes: int

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(
    name: str, run: Callable[[], pd.DataFrame], *, events: int, repeats: int
) -> tuple[Result, pd.DataFrame]:
    """Time ``run`` ``repeats`` times; keep the last output and the highest memory peak."""
    seconds, peak, out = [], 0, pd.DataFrame()
    for _ in range(repeats):
        del out
        _release_freed_memory()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = run()
            seconds.append(time.perf_counter() - t0)
        peak = max(peak, mem.increase)
    return Result(name, events, len(out), seconds, peak), out


def _slice(events: pd.DataFrame, rows: np.ndarray | pd.Index) -> pd.DataFrame:
    """Some rows as a log in its own right: customers it does not mention are dropped.

    (The engine sizes its work by the number of customer categories, used or not.)
    """
    part = events.iloc[rows].reset_index(drop=True)
    part["customer_id"] = part["customer_id"].cat.remove_unused_categories()
    return part


def _agree(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return bool(
        a.index.equals(b.index)
        and list(a.columns) == list(b.columns)
        and np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=0, equal_nan=True)
    )


def _machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model or platform.processor()}; {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), {mem_gib:.1f} GiB; numba threads "
        f"{numba.get_num_threads()}; Python {platform.python_version()}, numpy "
        f"{np.__version__}, pandas {pd.__version__}, numba {numba.__version__}; load "
        f"average {os.getloadavg()[0]:.2f} (the machine may be shared)"
    )


def _print_table(results: list[Result]) -> None:
    head = (
        f"{'engine':<28}{'events':>12}{'rows':>10}{'best s':>9}{'median s':>10}"
        f"{'M events/s':>12}{'peak RSS +MiB':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.name:<28}{r.events:>12,}{r.rows:>10,}{r.best:>9.2f}{r.median:>10.2f}"
            f"{r.events / r.best / 1e6:>12.2f}{r.peak_bytes / 2**20:>15.0f}"
        )


Baseline = Callable[..., pd.DataFrame]


def load_baselines(names: list[str]) -> dict[str, Baseline]:
    """The baseline functions of ``names``; one whose library is missing is left out.

    A missing library is reported in one line, with how to install it.
    """
    found: dict[str, Baseline] = {}
    for name in names:
        module, library, _ = BASELINES[name]
        try:
            found[name] = getattr(importlib.import_module(module), f"{name}_features")
        except ModuleNotFoundError as exc:
            if exc.name != library:
                raise
            print(
                f"{library} is not installed: the {name} baseline is skipped "
                "(install it with: pip install -e '.[bench]')"
            )
    return found


def _libraries(names: list[str]) -> str:
    """Versions and thread counts of the baselines' libraries (all left at their defaults)."""
    parts = []
    for name in names:
        library = importlib.import_module(BASELINES[name][1])
        threads = ""
        if name == "polars":
            threads = f", {library.thread_pool_size()} threads"
        elif name == "duckdb":
            ((count,),) = library.sql("SELECT current_setting('threads')").fetchall()
            threads = f", {count} threads"
        parts.append(f"{name} {library.__version__}{threads}")
    return "; ".join(parts)


def run(
    n_events: int,
    n_customers: int,
    *,
    baseline_events: int,
    repeats: int,
    seed: int,
    baselines: list[str],
) -> None:
    definition: FeatureDefinition = load_definition()
    _libc()  # fix malloc's mmap threshold before anything big is allocated
    print(f"machine: {_machine()}")
    functions = load_baselines(baselines)
    if functions:
        print(f"baselines: {_libraries(list(functions))}")
    t0 = time.perf_counter()
    events = synthetic_log(n_events, n_customers, seed=seed)
    as_of = START + pd.Timedelta(days=SPAN_DAYS)
    print(
        f"log: {n_events:,} events, {n_customers:,} customers, generated in "
        f"{time.perf_counter() - t0:.1f} s, {events.memory_usage(deep=False).sum() / 2**20:.0f}"
        f" MiB; {len(definition.feature_names())} features at as_of {as_of.date()}"
    )

    # Compilation happens here, once; numba caches it, and it is not part of any timing.
    t0 = time.perf_counter()
    build_features(_slice(events, events.index[:100_000]), as_of=as_of, definition=definition)
    print(f"JIT warm-up on 100,000 events: {time.perf_counter() - t0:.1f} s (excluded)")

    results = []
    engine, engine_out = measure(
        "engine (numba)",
        functools.partial(build_features, events, as_of=as_of, definition=definition),
        events=n_events,
        repeats=repeats,
    )
    results.append(engine)

    if functions and baseline_events < n_events:
        # Whole customers, not random rows, so histories keep their length.
        keep = np.flatnonzero(
            events["customer_id"].cat.codes.to_numpy() < n_customers * baseline_events / n_events
        )
        sample = _slice(events, keep)
        del keep
        print(
            f"{', '.join(functions)} run on a subsample: the {len(sample):,} events of the "
            f"first {sample['customer_id'].cat.categories.size:,} customers"
        )
        engine_same, engine_out = measure(
            "engine (numba), subsample",
            functools.partial(build_features, sample, as_of=as_of, definition=definition),
            events=len(sample),
            repeats=repeats,
        )
        results.append(engine_same)
    else:
        sample, engine_same = events, engine

    del events  # the large log is not needed by the baselines: free it first
    compared: list[tuple[str, Result, bool]] = []  # baseline, its timings, outputs agree
    for name, function in functions.items():
        # pandas takes minutes at 10 million events: one run; the others as the engine
        result, out = measure(
            BASELINES[name][2],
            functools.partial(function, sample, as_of=as_of, definition=definition),
            events=len(sample),
            repeats=1 if name == "pandas" else repeats,
        )
        results.append(result)
        compared.append((name, result, _agree(engine_out, out)))
        del out
    print()
    _print_table(results)
    print()
    for name, result, same in compared:
        print(
            f"engine / {name} speed: {result.best / engine_same.best:.1f}x on the same "
            f"{len(sample):,} events (outputs agree: {'yes' if same else 'NO'})"
        )
    runs = [f"best of {repeats} engine runs"]
    runs += [
        f"{name}: best of {len(r.seconds)} runs" if len(r.seconds) > 1 else f"{name}: 1 run"
        for name, r, _ in compared
    ]
    print("; ".join(runs) + "; peak RSS above the level before")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the log")
    parser.add_argument("--customers", type=int, default=100_000, help="customers in the log")
    parser.add_argument(
        "--large", action="store_true", help="50 million events over 1 million customers"
    )
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=10_000_000,
        help="largest log the baselines run on; above it, a customer subsample of about this size",
    )
    parser.add_argument(
        "--baselines",
        type=_baseline_names,
        default="pandas,polars,duckdb",
        help=f"comma-separated baselines to run beside the engine, of {', '.join(BASELINES)}"
        " (empty: none)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of the engine, Polars and DuckDB (best and median); pandas runs once",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic log")
    args = parser.parse_args(argv)
    n_events, n_customers = (50_000_000, 1_000_000) if args.large else (args.events, args.customers)
    run(
        n_events,
        n_customers,
        baseline_events=args.baseline_events,
        repeats=args.repeats,
        seed=args.seed,
        baselines=args.baselines,
    )


def _baseline_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}"
        )
    return list(dict.fromkeys(names))


if __name__ == "__main__":
    main()
