"""Generate customer journeys with their ground truth (see ``docs/simulator.md``).

The model runs in whole UTC days. A customer arrives on a day drawn from the scenario's
arrival profile, with one acquisition event at a uniform time that day, an initial stage
and an activity level from a finite distribution. On every later day an active customer
first goes dormant (for good) with a stage-dependent hazard or else moves between stages
with the daily transition matrix; on each active day it emits Poisson(rate[stage, type] *
activity) events of each type at uniform times (on the arrival day only after the
acquisition event).

Days are not simulated one by one: the time spent in a stage is geometric, so the
generator draws whole stays ("segments") and the Poisson events of a segment at once,
which is the same distribution. Customers are generated in chunks, each with its own
random stream spawned from the seed, so the output depends only on the seed, the
scenario, the number of customers, the snapshots and the chunk size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
from customer_lifecycle.simulator.clock import DAY_US, parse_midnight, to_us
from customer_lifecycle.simulator.config import Scenario, ScenarioArrays, load_scenario
from customer_lifecycle.simulator.metrics import accuracy, macro_f1, roc_auc
from customer_lifecycle.simulator.oracle import filter_arrays

#: Customers per chunk; part of what makes a run reproducible, so not a user option.
CHUNK_SIZE = 50_000
#: Days per time bucket of the external sort (bounds the rows held in memory at once).
BUCKET_DAYS = 7
#: Output formats of the event file.
FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Plan:
    """Validated settings of one simulation run."""

    scenario: Scenario
    arrays: ScenarioArrays
    customers: int
    seed: int
    as_of: tuple[pd.Timestamp, ...]
    horizon_days: int
    chunk_size: int

    @property
    def start_us(self) -> int:
        return int(self.arrays.start.astype("datetime64[us]").astype(np.int64))

    @property
    def as_of_days(self) -> np.ndarray:
        """Snapshot days counted from the first arrival day."""
        return np.asarray([(to_us(t) - self.start_us) // DAY_US for t in self.as_of])

    @property
    def end_day(self) -> int:
        """First day not simulated: past the arrival period and every outcome window."""
        return int(max(len(self.arrays.arrival_weights), self.as_of_days.max() + self.horizon_days))

    @property
    def n_chunks(self) -> int:
        return -(-self.customers // self.chunk_size)

    @property
    def id_width(self) -> int:
        return max(7, len(str(self.customers - 1)))

    def customer_ids(self, codes: np.ndarray) -> pa.Array:
        """Customer ids ``c0000042`` (at least 7 digits) of integer customer codes."""
        return customer_id_array(codes, self.id_width)


def customer_id_array(codes: np.ndarray, width: int) -> pa.Array:
    """Arrow strings ``"c" + zero-padded code``, built without one Python string per row."""
    codes = np.asarray(codes, dtype=np.int64)
    n, w = codes.size, width + 1
    buf = np.empty((n, w), dtype=np.uint8)
    buf[:, 0] = ord("c")
    rest = codes.copy()
    for j in range(width, 0, -1):
        buf[:, j] = ord("0") + rest % 10
        rest //= 10
    offsets = np.arange(n + 1, dtype=np.int64) * w
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf.tobytes()))
    return arr.cast(pa.string())


@dataclass(frozen=True)
class Chunk:
    """Customers ``first .. first + n - 1`` with their hidden paths and events.

    Customer arrays are indexed by the local position ``0 .. n - 1``; days count from the
    scenario's first arrival day; times are microseconds since the epoch.
    """

    first: int
    n: int
    arrival_day: np.ndarray
    level: np.ndarray
    seg_customer: np.ndarray
    seg_stage: np.ndarray
    seg_start: np.ndarray
    ev_customer: np.ndarray
    ev_time: np.ndarray
    ev_type: np.ndarray
    ev_amount: np.ndarray
    ev_channel: np.ndarray

    def stage_at(self, last_day: int) -> tuple[np.ndarray, np.ndarray]:
        """Customers arrived by ``last_day`` and their hidden stage on that day.

        A dormant customer keeps the stage it had when it went dormant.
        """
        keep = self.seg_start <= last_day
        cust = self.seg_customer[keep]
        stage = self.seg_stage[keep]
        # Segments are sorted by (customer, start): the last one per customer holds.
        last = np.ones(cust.size, dtype=bool)
        last[:-1] = cust[1:] != cust[:-1]
        return cust[last], stage[last]

    def active_between(self, start_us: int, end_us: int) -> np.ndarray:
        """Per customer: whether it has any event at times ``[start_us, end_us)``."""
        hit = (self.ev_time >= start_us) & (self.ev_time < end_us)
        out = np.zeros(self.n, dtype=bool)
        out[self.ev_customer[hit]] = True
        return out


def make_plan(
    scenario: Scenario | str | Path = "default",
    *,
    customers: int,
    seed: int,
    as_of: Sequence[object] | None = None,
    horizon_days: int = 90,
    chunk_size: int = CHUNK_SIZE,
) -> Plan:
    """Validate the settings of a run; each bad value is a one-line ``ValueError``.

    ``as_of`` defaults to one snapshot at the end of the arrival period; every snapshot
    must be at midnight UTC and after the first arrival day.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    arrays = sc.arrays()
    if isinstance(customers, bool) or not isinstance(customers, int | np.integer):
        raise ValueError(f"customers must be a whole number, got {customers!r}")
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    start = pd.Timestamp(arrays.start).tz_localize("UTC")
    if as_of is None or len(as_of) == 0:
        snapshots = [start + pd.Timedelta(days=sc.arrivals.days)]
    else:
        snapshots = [parse_midnight(t) for t in as_of]
    for t in snapshots:
        if t <= start:
            raise ValueError(
                f"as_of {t.isoformat()} is not after the first arrival day "
                f"{start.date().isoformat()} of scenario {sc.name!r}"
            )
    unique = tuple(sorted(set(snapshots)))
    return Plan(sc, arrays, int(customers), int(seed), unique, int(horizon_days), int(chunk_size))


def simulate_chunks(plan: Plan) -> Iterator[Chunk]:
    """Yield the run's customers chunk by chunk, each from its own spawned seed."""
    children = np.random.SeedSequence(plan.seed).spawn(plan.n_chunks)
    for i, child in enumerate(children):
        first = i * plan.chunk_size
        n = min(plan.chunk_size, plan.customers - first)
        yield _simulate_chunk(plan, np.random.Generator(np.random.PCG64(child)), first, n)


def _simulate_chunk(plan: Plan, rng: np.random.Generator, first: int, n: int) -> Chunk:
    a = plan.arrays
    n_s = len(a.stages)
    end_day = plan.end_day
    start_us = plan.start_us

    arrival = rng.choice(a.arrival_weights.size, size=n, p=a.arrival_weights).astype(np.int64)
    level = rng.choice(a.levels.size, size=n, p=a.level_probs).astype(np.int64)
    stage0 = rng.choice(n_s, size=n, p=a.initial).astype(np.int64)
    t0 = start_us + arrival * DAY_US + rng.integers(0, DAY_US, size=n)
    arrival_type = _categorical(rng, stage0, a.arrival_events)

    # Hidden path as stays: a stay in stage s lasts Geometric(1 - stay[s]) days, then
    # the customer goes dormant or moves to another stage, in proportion.
    stay = (1.0 - a.dormancy) * np.diag(a.move)
    leave = 1.0 - stay
    jump = np.zeros((n_s, n_s + 1))
    jump[:, :n_s] = (1.0 - a.dormancy)[:, None] * a.move
    jump[np.arange(n_s), np.arange(n_s)] = 0.0
    jump[:, n_s] = a.dormancy
    jump = np.divide(jump, leave[:, None], out=np.zeros_like(jump), where=leave[:, None] > 0)

    segs_c, segs_s, segs_b, segs_e = [], [], [], []
    cust = np.arange(n, dtype=np.int64)
    stage = stage0
    begin = arrival
    while cust.size:
        u = 1.0 - rng.random(cust.size)  # in (0, 1]
        p = leave[stage]
        with np.errstate(divide="ignore", invalid="ignore"):
            days = np.floor(np.log(u) / np.log1p(-p)) + 1.0
        days = np.where(np.isnan(days) | (days > end_day), end_day, days)
        end = np.minimum(begin + days.astype(np.int64), end_day)
        segs_c.append(cust)
        segs_s.append(stage)
        segs_b.append(begin)
        segs_e.append(end)
        alive = end < end_day
        cust, stage, begin = cust[alive], stage[alive], end[alive]
        target = _categorical(rng, stage, jump)
        moved = target < n_s
        cust, stage, begin = cust[moved], target[moved], begin[moved]

    seg_c = np.concatenate(segs_c)
    seg_s = np.concatenate(segs_s)
    seg_b = np.concatenate(segs_b)
    seg_e = np.concatenate(segs_e)
    order = np.lexsort((seg_b, seg_c))
    seg_c, seg_s, seg_b, seg_e = seg_c[order], seg_s[order], seg_b[order], seg_e[order]

    # Poisson events of each stay. On the arrival day they start after the acquisition
    # event, so the exposure of the first stay begins at t0 rather than at midnight.
    is_first = seg_b == arrival[seg_c]
    em_start = np.where(is_first, t0[seg_c], start_us + seg_b * DAY_US)
    em_end = start_us + seg_e * DAY_US
    exposure = (em_end - em_start) / DAY_US
    mean = a.levels[level[seg_c]] * a.total_rates[seg_s] * exposure
    counts = rng.poisson(mean)
    which = np.repeat(np.arange(seg_c.size), counts)
    lo = em_start[which] + is_first[which]  # strictly after the acquisition event
    width = em_end[which] - lo
    ev_time = lo + np.floor(rng.random(which.size) * width).astype(np.int64)
    ev_stage = seg_s[which]
    ev_type = _categorical(rng, ev_stage, a.rates / np.maximum(a.total_rates, 1e-300)[:, None])
    ev_amount = np.full(which.size, np.nan)
    for m, code in enumerate(a.amount_types):
        hit = np.flatnonzero(ev_type == code)
        z = rng.standard_normal(hit.size)
        s = ev_stage[hit]
        ev_amount[hit] = np.exp(a.amount_log_median[m, s] + a.amount_sigma[m, s] * z)

    ev_customer = np.concatenate([np.arange(n, dtype=np.int64), seg_c[which]])
    ev_time = np.concatenate([t0, ev_time])
    ev_type = np.concatenate([arrival_type, ev_type])
    ev_amount = np.concatenate([np.full(n, np.nan), ev_amount])
    ev_channel = _categorical(rng, ev_type, a.channel_probs)
    return Chunk(
        first=first,
        n=n,
        arrival_day=arrival,
        level=level,
        seg_customer=seg_c,
        seg_stage=seg_s.astype(np.int64),
        seg_start=seg_b,
        ev_customer=ev_customer,
        ev_time=ev_time.astype(np.int64),
        ev_type=ev_type.astype(np.int16),
        ev_amount=ev_amount,
        ev_channel=ev_channel.astype(np.int16),
    )


def _categorical(rng: np.random.Generator, group: np.ndarray, table: np.ndarray) -> np.ndarray:
    """One draw per element from row ``group[i]`` of a row-stochastic ``table``."""
    u = rng.random(group.size)
    out = np.zeros(group.size, dtype=np.int64)
    cum = np.cumsum(table, axis=1)
    cum[:, -1] = np.inf  # rounding must never push a draw past the last category
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        out[idx] = np.searchsorted(cum[g], u[idx], side="right")
    return out


@dataclass
class SimulatedData:
    """A whole simulation in memory (for tests and notebooks; files use :func:`write_dataset`)."""

    events: pd.DataFrame
    labels: pd.DataFrame
    outcomes: pd.DataFrame
    plan: Plan


def simulate(
    scenario: Scenario | str | Path = "default",
    *,
    customers: int,
    seed: int,
    as_of: Sequence[object] | None = None,
    horizon_days: int = 90,
    chunk_size: int = CHUNK_SIZE,
) -> SimulatedData:
    """Simulate in memory and return events, labels and outcomes as data frames.

    Same arguments as :func:`write_dataset`; the frames hold exactly what it writes.
    """
    plan = make_plan(
        scenario,
        customers=customers,
        seed=seed,
        as_of=as_of,
        horizon_days=horizon_days,
        chunk_size=chunk_size,
    )
    tables, labels, outcomes = [], [], []
    for chunk in simulate_chunks(plan):
        tables.append(_chunk_table(chunk))
        lab, out = _truth(plan, chunk)
        labels.append(lab)
        outcomes.append(out)
    events = _render(plan, _sorted(pa.concat_tables(tables))).to_pandas()
    return SimulatedData(
        events=events,
        labels=_frame_truth(plan, labels, "stage"),
        outcomes=_frame_truth(plan, outcomes, "churned"),
        plan=plan,
    )


def _chunk_table(chunk: Chunk) -> pa.Table:
    return pa.table(
        {
            "time": chunk.ev_time,
            "cust": chunk.ev_customer + chunk.first,
            "seq": np.arange(chunk.ev_time.size, dtype=np.int64),
            "type": chunk.ev_type,
            "amount": chunk.ev_amount,
            "channel": chunk.ev_channel,
        }
    )


def _truth(plan: Plan, chunk: Chunk) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per snapshot: (global customer, stage) labels and (global customer, churned)."""
    labels, outcomes = [], []
    for t, day in zip(plan.as_of, plan.as_of_days, strict=True):
        cust, stage = chunk.stage_at(int(day) - 1)
        active = chunk.active_between(to_us(t), to_us(t) + plan.horizon_days * DAY_US)
        labels.append(np.stack([cust + chunk.first, stage]))
        outcomes.append(np.stack([cust + chunk.first, ~active[cust]]))
    return labels, outcomes


def _frame_truth(plan: Plan, parts: list[list[np.ndarray]], column: str) -> pd.DataFrame:
    frames = []
    for j, t in enumerate(plan.as_of):
        block = np.concatenate([p[j] for p in parts], axis=1)
        values = (
            np.asarray(plan.arrays.stages, dtype=object)[block[1]]
            if column == "stage"
            else block[1].astype(bool)
        )
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": plan.customer_ids(block[0]).to_numpy(zero_copy_only=False),
                    column: values,
                    "as_of": t.isoformat(),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    return out[["customer_id", column, "as_of"]] if column == "stage" else out


def _render(plan: Plan, table: pa.Table) -> pa.Table:
    """Turn integer codes into the event contract's columns."""
    a = plan.arrays
    return pa.table(
        {
            "customer_id": plan.customer_ids(table.column("cust").to_numpy()),
            "timestamp": table.column("time").cast(pa.timestamp("us", tz="UTC")),
            "event_type": pc.take(pa.array(a.event_types), table.column("type")),
            "amount": pa.array(table.column("amount").to_numpy(), pa.float64(), from_pandas=True),
            "channel": pc.take(pa.array(a.channels), table.column("channel")),
        }
    )


def write_dataset(
    out: str | Path,
    *,
    scenario: Scenario | str | Path = "default",
    customers: int,
    seed: int,
    as_of: Sequence[object] | None = None,
    horizon_days: int = 90,
    fmt: str = "parquet",
    oracle: bool = False,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Simulate and write ``events.<fmt>``, ``labels.csv``, ``outcomes.csv``,
    ``metadata.json`` (and ``oracle.csv``) into ``out``; return the metadata.

    Events are globally sorted by timestamp (ties by customer id, then generation
    order). Memory stays bounded: customers are generated chunk by chunk and, when
    there is more than one chunk, events are spilled to week buckets under
    ``out/.events-tmp`` and each bucket is sorted and appended on its own.

    Raises ``ValueError`` (one line) on bad settings, before anything is written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plan = make_plan(
        scenario,
        customers=customers,
        seed=seed,
        as_of=as_of,
        horizon_days=horizon_days,
        chunk_size=chunk_size,
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda phase, done, total: None)
    spill_dir = out / ".events-tmp"
    shutil.rmtree(spill_dir, ignore_errors=True)
    labels: list[list[np.ndarray]] = []
    outcomes: list[list[np.ndarray]] = []
    oracle_parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    in_memory: pa.Table | None = None
    n_events = 0
    try:
        report("simulating", 0, plan.n_chunks)
        for i, chunk in enumerate(simulate_chunks(plan)):
            lab, outc = _truth(plan, chunk)
            labels.append(lab)
            outcomes.append(outc)
            if oracle:
                oracle_parts.append(_chunk_oracle(plan, chunk))
            table = _chunk_table(chunk)
            n_events += table.num_rows
            if plan.n_chunks == 1:
                in_memory = table
            else:
                _spill(table, spill_dir, i, plan.start_us)
            report("simulating", i + 1, plan.n_chunks)
        events_path = out / f"events.{fmt}"
        with _EventWriter(events_path, fmt) as writer:
            if in_memory is not None:
                report("writing events", 0, 1)
                writer.write(_render(plan, _sorted(in_memory)))
                report("writing events", 1, 1)
            else:
                buckets = sorted(p for p in spill_dir.iterdir())
                for j, bucket in enumerate(buckets):
                    report("writing events", j, len(buckets))
                    parts = [feather.read_table(p) for p in sorted(bucket.iterdir())]
                    writer.write(_render(plan, _sorted(pa.concat_tables(parts))))
                report("writing events", len(buckets), len(buckets))
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)

    label_frame = _frame_truth(plan, labels, "stage")
    outcome_frame = _frame_truth(plan, outcomes, "churned")
    label_frame.to_csv(out / "labels.csv", index=False)
    outcome_frame[["customer_id", "as_of", "churned"]].to_csv(out / "outcomes.csv", index=False)
    meta = _metadata(plan, fmt, n_events, label_frame, outcome_frame)
    if oracle:
        scores = _frame_oracle(plan, oracle_parts)
        scores.to_csv(out / "oracle.csv", index=False)
        meta["oracle"] = oracle_scores(scores, label_frame, outcome_frame, plan.arrays.stages)
        meta["files"]["oracle"] = "oracle.csv"
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def oracle_scores(
    scores: pd.DataFrame, labels: pd.DataFrame, outcomes: pd.DataFrame, stages: Sequence[str]
) -> dict[str, float]:
    """Accuracy and macro-F1 of the oracle's most probable stage, ROC-AUC of its churn
    probability, over all snapshot rows."""
    key = ["customer_id", "as_of"]
    merged = scores.merge(labels, on=key).merge(outcomes[[*key, "churned"]], on=key)
    proba = merged[[f"p_{s}" for s in stages]].to_numpy()
    predicted = np.asarray(stages, dtype=object)[proba.argmax(axis=1)]
    truth = merged["stage"].to_numpy(dtype=object)
    return {
        "stage_accuracy": accuracy(truth, predicted),
        "stage_macro_f1": macro_f1(truth, predicted),
        "churn_roc_auc": roc_auc(
            merged["churned"].to_numpy(dtype=bool), merged["churn_probability"].to_numpy()
        ),
        "rows": int(len(merged)),
    }


def _chunk_oracle(plan: Plan, chunk: Chunk) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    parts = []
    for t in plan.as_of:
        present, post, churn, _ = filter_arrays(
            plan.arrays,
            customer=chunk.ev_customer,
            time_us=chunk.ev_time,
            event_type=chunk.ev_type.astype(np.int64),
            amount=chunk.ev_amount,
            as_of_us=to_us(t),
            horizon_days=plan.horizon_days,
            n_customers=chunk.n,
        )
        parts.append((np.flatnonzero(present) + chunk.first, post, churn))
    return parts


def _frame_oracle(
    plan: Plan, parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
) -> pd.DataFrame:
    frames = []
    for j, t in enumerate(plan.as_of):
        cust = np.concatenate([p[j][0] for p in parts])
        post = np.concatenate([p[j][1] for p in parts])
        frame = pd.DataFrame(
            {
                "customer_id": plan.customer_ids(cust).to_numpy(zero_copy_only=False),
                "as_of": t.isoformat(),
            }
        )
        for k, stage in enumerate(plan.arrays.stages):
            frame[f"p_{stage}"] = post[:, k]
        frame["churn_probability"] = np.concatenate([p[j][2] for p in parts])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _metadata(
    plan: Plan, fmt: str, n_events: int, labels: pd.DataFrame, outcomes: pd.DataFrame
) -> dict[str, Any]:
    start = pd.Timestamp(plan.arrays.start).tz_localize("UTC")
    per_snapshot = []
    for t in plan.as_of:
        lab = labels[labels["as_of"] == t.isoformat()]
        outc = outcomes[outcomes["as_of"] == t.isoformat()]
        counts = lab["stage"].value_counts()
        per_snapshot.append(
            {
                "as_of": t.isoformat(),
                "labelled_customers": int(len(lab)),
                "stages": {s: int(counts.get(s, 0)) for s in plan.arrays.stages},
                "churn_rate": float(outc["churned"].mean()) if len(outc) else float("nan"),
            }
        )
    return {
        "generator": "simulator",
        "package_version": _package_version(),
        "seed": plan.seed,
        "scenario": plan.scenario.name,
        "parameters": plan.scenario.model_dump(mode="json"),
        "as_of": [t.isoformat() for t in plan.as_of],
        "horizon_days": plan.horizon_days,
        "simulated_from": start.isoformat(),
        "simulated_until": (start + pd.Timedelta(days=plan.end_day)).isoformat(),
        "chunk_size": plan.chunk_size,
        "format": fmt,
        "files": {
            "events": f"events.{fmt}",
            "labels": "labels.csv",
            "outcomes": "outcomes.csv",
        },
        "events_order": "timestamp, then customer_id, then generation order",
        "counts": {"customers": plan.customers, "events": int(n_events)},
        "snapshots": per_snapshot,
    }


def _package_version() -> str:
    try:
        return metadata.version("customer-lifecycle")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout only
        return "unknown"


def _sorted(table: pa.Table) -> pa.Table:
    keys = [("time", "ascending"), ("cust", "ascending"), ("seq", "ascending")]
    return table.take(pc.sort_indices(table, keys))


def _spill(table: pa.Table, spill_dir: Path, chunk: int, start_us: int) -> None:
    """Append one chunk's events to per-week bucket files (the external sort's first pass)."""
    time = table.column("time").to_numpy()
    bucket = (time - start_us) // (BUCKET_DAYS * DAY_US)
    order = np.argsort(bucket, kind="stable")
    table, bucket = table.take(order), bucket[order]
    bounds = np.flatnonzero(np.diff(bucket)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, bucket.size], strict=True):
        if hi <= lo:
            continue
        folder = spill_dir / f"{int(bucket[lo]):06d}"
        folder.mkdir(parents=True, exist_ok=True)
        feather.write_feather(
            table.slice(lo, hi - lo), folder / f"{chunk:06d}.arrow", compression="uncompressed"
        )


_ROW_GROUP = 1 << 20


class _EventWriter:
    """Append sorted event tables to one Parquet, CSV or JSON-lines file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._parquet: pq.ParquetWriter | None = None
        self._csv: pacsv.CSVWriter | None = None
        self._file: Any = None

    def __enter__(self) -> _EventWriter:
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, table: pa.Table) -> None:
        if self.fmt == "parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._file, table.schema, compression="zstd")
            self._parquet.write_table(table, row_group_size=_ROW_GROUP)
            return
        text = table.set_column(1, "timestamp", _iso(table.column("timestamp")))
        if self.fmt == "csv":
            if self._csv is None:
                self._csv = pacsv.CSVWriter(self._file, text.schema)
            self._csv.write_table(text)
            return
        frame = text.to_pandas()
        self._file.write(frame.to_json(orient="records", lines=True, double_precision=15).encode())

    def __exit__(self, *exc: object) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()
        self._file.close()
        if self.fmt == "parquet" and self._parquet is None and exc[0] is None:
            _empty_events().to_pandas().to_parquet(self.path)


def _iso(ts: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 UTC strings with microseconds, e.g. ``2024-01-01T09:30:00.000000Z``."""
    text = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise(text, pa.scalar("Z"), pa.scalar(""))


def _empty_events() -> pa.Table:
    return pa.table(
        {
            "customer_id": pa.array([], pa.string()),
            "timestamp": pa.array([], pa.timestamp("us", tz="UTC")),
            "event_type": pa.array([], pa.string()),
            "amount": pa.array([], pa.float64()),
            "channel": pa.array([], pa.string()),
        }
    )
