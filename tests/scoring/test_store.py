"""The score store (issue 15) against a real SQLite file and a real PostgreSQL server.

Runs are written from scores files as ``lifecycle score`` writes them, then read back:
latest and history, ranks, change times, segments with their cursor, transitions,
atomic visibility, schema versions, export, ``score --store`` end to end, the stage
forecast (``p_next_<stage>``) and the customer value (issue 16) kept beside the scores,
and lookups that keep answering while the store is vacuumed or migrated (``lifecycle
vacuum``).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.scoring.store import (
    SCHEMA_VERSION,
    VALUE_COLUMNS,
    open_store,
    schema,
    write_run,
)
from customer_lifecycle.scoring.store import queries as q
from customer_lifecycle.scoring.store.export import export_segment
from customer_lifecycle.scoring.store.maintenance import vacuum
from customer_lifecycle.scoring.store.schema import (
    create_store_engine,
    ensure_schema,
    read_version,
    runs,
    scores,
    sqlite_path,
    store_meta,
    writing,
)
from customer_lifecycle.scoring.store.writer import RunInfo
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.features.support import AS_OF, write_log
from tests.postgres import postgres_server
from tests.scoring.test_batch import bundle, raw  # noqa: F401  (module fixtures: a small model)

STAGES = ("new", "active", "retention")
_names = itertools.count()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "scores.db")
    return _pg_database(request.getfixturevalue("pg_server"))


def _pg_database(server: str) -> str:
    """The URL of a new, empty database on the test server."""
    name = f"store_{next(_names)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    eng = open_store(url)
    yield eng
    eng.dispose()


def next_probabilities(customer_id: str, stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """The stage forecast :func:`scores_file` gives a customer: one stage, picked from the
    id, gets 4/7, the others share the rest (floats without a short decimal form)."""
    pick = sum(map(ord, customer_id)) % len(stages)
    return {s: 4 / 7 if i == pick else (3 / 7) / (len(stages) - 1) for i, s in enumerate(stages)}


def customer_value(customer_id: str, *, amounts: bool = True) -> dict[str, object]:
    """The value :func:`scores_file` gives a customer, picked from the id (floats without a
    short decimal form); ``amounts=False``: a log without purchase amounts."""
    k = sum(map(ord, customer_id))
    return {
        "expected_purchases": k / 7,
        "expected_spend": k * 10 / 3 if amounts else None,
        "next_purchase_date": f"2025-01-{k % 28 + 1:02d}",
        "value_tier": ("top_1", "top_5", "rest")[k % 3],
    }


#: The value of a customer without a prediction (no purchase history, say).
NO_PREDICTION = {
    "expected_purchases": None,
    "expected_spend": None,
    "next_purchase_date": None,
    "value_tier": "unknown",
}


def scores_file(
    path: Path,
    rows: list[tuple[str, str, float]],
    stages: tuple[str, ...] = STAGES,
    *,
    forecast: bool = False,
    without_forecast: tuple[str, ...] = (),
    value: bool = False,
    without_value: tuple[str, ...] = (),
    amounts: bool = True,
) -> Path:
    """A ``lifecycle score`` output: (customer_id, stage, churn probability) per row; with
    ``forecast`` also ``p_next_<stage>`` (:func:`next_probabilities`), missing (NaN) for
    the customers ``without_forecast`` (no history before ``as_of``); with ``value`` the
    value columns (:func:`customer_value`), :data:`NO_PREDICTION` for ``without_value``."""
    frame = pd.DataFrame(rows, columns=["customer_id", "stage", "churn_probability"])
    p = frame["churn_probability"]
    frame["churn_risk"] = np.where(p < 0.3, "low", np.where(p < 0.6, "medium", "high"))
    for s in stages:  # the predicted stage gets 0.6, the others share the rest
        frame[f"p_{s}"] = np.where(frame["stage"] == s, 0.6, 0.4 / (len(stages) - 1))
    if forecast:
        for s in stages:
            frame[f"p_next_{s}"] = [
                np.nan if c in without_forecast else next_probabilities(c, stages)[s]
                for c in frame["customer_id"]
            ]
    if value:
        values = [
            NO_PREDICTION if c in without_value else customer_value(c, amounts=amounts)
            for c in frame["customer_id"]
        ]
        for name in VALUE_COLUMNS:
            column = pd.Series([v[name] for v in values])
            frame[name] = column.astype("float64" if name.startswith("expected") else "str")
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


RUN1 = [
    ("007", "new", 0.10),  # a leading zero: ids are text
    ("a", "active", 0.20),
    ("b", "active", 0.80),
    ("c", "retention", 0.50),
    ("d", "retention", 0.90),
]
RUN2 = [
    ("007", "active", 0.10),  # stage changes, band stays low
    ("a", "active", 0.70),  # band changes low -> high, stage stays
    ("b", "active", 0.80),  # nothing changes
    ("c", "retention", 0.95),  # band medium -> high
    ("e", "new", 0.40),  # new customer
]


def _write(
    engine: sa.Engine,
    tmp_path: Path,
    rows: list,
    as_of: str,
    *,
    suffix: str = ".parquet",
    forecast: bool = False,
    without_forecast: tuple[str, ...] = (),
    value: bool = False,
    without_value: tuple[str, ...] = (),
    **kw: object,
) -> RunInfo:
    path = scores_file(
        tmp_path / f"run-{as_of}{suffix}",
        rows,
        forecast=forecast,
        without_forecast=without_forecast,
        value=value,
        without_value=without_value,
    )
    return write_run(engine, path, model_name="m", model_version="1", as_of=as_of, **kw)  # type: ignore[arg-type]


def test_latest_history_ranks_and_change_times(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    _write(engine, tmp_path, RUN2, "2024-12-31")
    with engine.connect() as conn:
        s = q.latest(conn, "007")
        assert (s.stage, s.churn_risk, s.as_of) == ("active", "low", "2024-12-31T00:00:00Z")
        assert s.stage_probabilities == {"new": 0.2, "active": 0.6, "retention": 0.2}
        assert s.stage_since == "2024-12-31T00:00:00Z"  # entered "active" in run 2
        assert s.risk_since == "2024-11-30T00:00:00Z"  # low in both runs
        b = q.latest(conn, "b")
        assert b.stage_since == b.risk_since == "2024-11-30T00:00:00Z"
        # percentile ranks in run 2: 0.1 0.4 0.7 0.8 0.95 -> 20 40 60 80 100
        assert [q.latest(conn, c).churn_rank for c in ("007", "e", "a", "b", "c")] == [
            20.0,
            40.0,
            60.0,
            80.0,
            100.0,
        ]
        # within "active" (0.1, 0.7, 0.8): 007 is at 1/3
        assert q.latest(conn, "007").stage_churn_rank == pytest.approx(100 / 3)
        assert q.latest(conn, "c").stage_churn_rank == 100.0  # alone in retention
        # d was scored only in run 1: its latest score is from there
        assert q.latest(conn, "d").as_of == "2024-11-30T00:00:00Z"
        assert [h.as_of[:10] for h in q.history(conn, "a")] == ["2024-12-31", "2024-11-30"]
        with pytest.raises(q.NotFound):
            q.latest(conn, "nobody")
        with pytest.raises(q.NotFound):
            q.history(conn, "nobody")


def test_segments_filter_and_page_by_cursor(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    _write(engine, tmp_path, RUN2, "2024-12-31")
    with engine.connect() as conn:

        def ids(seg: q.SegmentFilter, **kw: object) -> list[str]:
            return [s.customer_id for s in q.segment(conn, seg, **kw).items]  # type: ignore[arg-type]

        assert ids(q.SegmentFilter(stage="active")) == ["007", "a", "b"]
        assert ids(q.SegmentFilter(risk="high")) == ["a", "b", "c"]
        assert ids(q.SegmentFilter(stage="active", risk="high")) == ["a", "b"]
        assert ids(q.SegmentFilter(min_churn=0.5, max_churn=0.9)) == ["a", "b"]
        since = "2024-12-01T00:00:00Z"
        assert ids(q.SegmentFilter(stage_changed_since=since)) == ["007", "e"]
        assert ids(q.SegmentFilter(risk_changed_since=since)) == ["a", "c", "e"]
        assert ids(q.SegmentFilter(), run_id=1) == ["007", "a", "b", "c", "d"]
        first = q.segment(conn, q.SegmentFilter(), limit=2)
        assert [s.customer_id for s in first.items] == ["007", "a"] and first.next_cursor
    # a newer run completes while a client pages: the cursor keeps to its run
    _write(engine, tmp_path, [("zz", "new", 0.5)], "2025-01-31")
    with engine.connect() as conn:
        rest, cursor = [], first.next_cursor
        while cursor:
            page = q.segment(conn, q.SegmentFilter(), cursor=cursor, limit=2)
            assert page.run.run_id == first.run.run_id
            rest += [s.customer_id for s in page.items]
            cursor = page.next_cursor
        assert rest == ["b", "c", "e"]
        with pytest.raises(ValueError, match="invalid cursor"):
            q.segment(conn, q.SegmentFilter(), cursor="not-a-cursor")


def test_transitions_between_two_runs(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    _write(engine, tmp_path, RUN2, "2024-12-31")
    with engine.connect() as conn:
        page = q.transitions(conn)
        assert (page.from_run.run_id, page.run.run_id) == (1, 2)  # type: ignore[union-attr]
        got = {
            (t.customer_id, t.from_stage, t.to_stage, t.from_risk, t.to_risk) for t in page.items
        }
        assert got == {
            ("007", "new", "active", "low", "low"),
            ("a", "active", "active", "low", "high"),
            ("c", "retention", "retention", "medium", "high"),
        }
        into_high = q.transitions(conn, to_risk="high", from_stage="retention")
        assert [t.customer_id for t in into_high.items] == ["c"]
        one = q.transitions(conn, limit=1)
        two = q.transitions(conn, cursor=one.next_cursor, limit=1)
        assert [t.customer_id for t in [*one.items, *two.items]] == ["007", "a"]
        with pytest.raises(q.NotFound):
            q.transitions(conn, to_run=1)  # nothing before the first run


def test_keep_runs_removes_the_oldest(engine: sa.Engine, tmp_path: Path) -> None:
    for month in ("10-31", "11-30", "12-31"):
        _write(engine, tmp_path, RUN1, f"2024-{month}", keep_runs=2)
    with engine.connect() as conn:
        assert [r.as_of[:10] for r in q.list_runs(conn)] == ["2024-12-31", "2024-11-30"]
        assert len(q.history(conn, "a")) == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(scores)).scalar() == 10


def test_an_older_run_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    with pytest.raises(ValueError, match="would be older"):
        _write(engine, tmp_path, RUN1, "2024-10-31")


def test_a_pending_run_is_invisible(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    with writing(engine) as conn:  # a writer halfway: its run is pending
        conn.execute(
            runs.insert().values(
                run_id=9,
                state="pending",
                model_name="m",
                model_version="2",
                as_of="2024-12-31T00:00:00Z",
                customers=0,
                risk_bands="{}",
                stages="[]",
                created_at="2024-12-31T00:00:00Z",
            )
        )
        row = {"customer_id": "a", "run_id": 9, "stage": "new", "churn_probability": 0.99}
        conn.execute(
            scores.insert().values(
                **row,
                churn_risk="high",
                stage_probabilities="{}",
                churn_rank=100.0,
                stage_churn_rank=100.0,
                stage_since="x",
                risk_since="x",
            )
        )
    with engine.connect() as conn:
        assert q.latest(conn, "a").run_id == 1
        assert len(q.history(conn, "a")) == 1
        assert q.segment(conn, q.SegmentFilter()).run.run_id == 1
        assert [r.run_id for r in q.list_runs(conn)] == [1]


def test_a_failed_write_leaves_the_old_run(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    bad = scores_file(tmp_path / "bad.csv", RUN2)
    text = bad.read_text().splitlines()
    text[4] = text[4].rsplit(",", 1)[0] + ",oops"  # a p_<stage> value, read in batch 2
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError):
        write_run(engine, bad, model_name="m", model_version="2", as_of="2024-12-31", batch_rows=2)
    with engine.connect() as conn:
        assert [r.run_id for r in q.list_runs(conn)] == [1]
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(scores)).scalar() == 5


def test_readers_during_a_write_see_the_old_run_or_the_whole_new_one(
    engine: sa.Engine, tmp_path: Path
) -> None:
    old = [(f"c{i:04d}", "active", 0.2) for i in range(300)]
    new = [(f"c{i:04d}", "retention", 0.9) for i in range(300)]
    _write(engine, tmp_path, old, "2024-11-30")
    path = scores_file(tmp_path / "new.parquet", new)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_run(engine, path, model_name="m", model_version="2", as_of="2024-12-31",
                      batch_rows=10)  # fmt: skip
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen = set()
    while writer.is_alive() or not seen - {"2024-11-30"}:
        with engine.connect() as conn:
            page = q.segment(conn, q.SegmentFilter(), limit=1000)
            stages = {s.stage for s in page.items}
            assert len(page.items) == 300 and len(stages) == 1  # never a partial run
            assert q.latest(conn, "c0150").as_of == page.run.as_of
            seen.add(page.run.as_of[:10])
        if not writer.is_alive() and not errors:
            break
    writer.join()
    assert not errors
    with engine.connect() as conn:
        assert q.latest(conn, "c0000").stage == "retention"


# -- the stage forecast ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])  # CSV: a missing value is empty
def test_the_stage_forecast_round_trips(engine: sa.Engine, tmp_path: Path, suffix: str) -> None:
    # run 1 has no previous run, run 2 is joined to it (the other insert path); "c" had no
    # history in run 2, and run 3 comes from a model without a forecast
    _write(engine, tmp_path, RUN1, "2024-11-30", suffix=suffix, forecast=True)
    _write(engine, tmp_path, RUN2, "2024-12-31", suffix=suffix, forecast=True,
           without_forecast=("c",))  # fmt: skip
    with engine.connect() as conn:
        for cid, *_ in RUN2:
            s = q.latest(conn, cid)
            assert s.next_stage_probabilities == (None if cid == "c" else next_probabilities(cid))
            assert s.stage_probabilities[s.stage] == 0.6  # the stages are not the forecast
        assert [h.next_stage_probabilities for h in q.history(conn, "c")] == [
            None,
            next_probabilities("c"),
        ]
        page = q.segment(conn, q.SegmentFilter(risk="high"))
        assert {i.customer_id: i.next_stage_probabilities for i in page.items} == {
            "a": next_probabilities("a"),
            "b": next_probabilities("b"),
            "c": None,
        }
    _write(engine, tmp_path, RUN2, "2025-01-31", suffix=suffix)
    with engine.connect() as conn:
        assert q.latest(conn, "a").next_stage_probabilities is None
        assert q.history(conn, "a")[1].next_stage_probabilities == next_probabilities("a")


def test_a_forecast_for_only_some_stages_is_not_kept(engine: sa.Engine, tmp_path: Path) -> None:
    path = scores_file(tmp_path / "part.parquet", RUN1, forecast=True)
    pd.read_parquet(path).drop(columns="p_next_new").to_parquet(path, index=False)
    run = write_run(engine, path, model_name="m", model_version="1", as_of="2024-11-30")
    assert run.stages == STAGES
    with engine.connect() as conn:
        assert q.latest(conn, "a").next_stage_probabilities is None


@pytest.mark.parametrize("name", ["seg.csv", "seg.parquet"])
def test_export_carries_the_forecast_of_a_run_that_has_one(
    engine: sa.Engine, tmp_path: Path, name: str
) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    _write(engine, tmp_path, RUN2, "2024-12-31", forecast=True, without_forecast=("a",))

    def export(segment: str, run_id: int) -> pd.DataFrame:
        out = tmp_path / f"{run_id}-{name}"
        export_segment(engine, q.parse_segment(segment), out, run_id=run_id)
        if name.endswith("csv"):
            return pd.read_csv(out, dtype={"customer_id": str})
        return pd.read_parquet(out)

    frame = export("stage=active", 2)
    assert frame["customer_id"].tolist() == ["007", "a", "b"]
    nxt = [f"p_next_{s}" for s in STAGES]
    columns = frame.columns.tolist()
    assert columns[columns.index("p_retention") + 1 : columns.index("as_of")] == nxt
    assert frame.loc[0, nxt].tolist() == list(next_probabilities("007").values())
    assert frame.loc[1, nxt].isna().all()  # "a" had no forecast
    # a segment of the forecast run without any forecast still has the columns
    assert set(nxt) <= set(export("stage=new,risk=high", 2).columns)
    assert not any(c.startswith("p_next_") for c in export("stage=active", 1).columns)


# -- the customer value ----------------------------------------------------------------------


def stored_value(customer_id: str, horizon: int | None = 365) -> q.StoredValue:
    """What the store gives back for :func:`customer_value`."""
    return q.StoredValue(**customer_value(customer_id), horizon_days=horizon)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])  # CSV: a missing value is empty
def test_the_customer_value_round_trips(engine: sa.Engine, tmp_path: Path, suffix: str) -> None:
    # run 1 has no previous run, run 2 is joined to it (the other insert path); "c" has no
    # prediction in run 2; run 3 comes from a model without a value model
    for rows, as_of in ((RUN1, "2024-11-30"), (RUN2, "2024-12-31")):
        path = scores_file(
            tmp_path / f"{as_of}{suffix}", rows, forecast=True, value=True, without_value=("c",)
        )
        run = write_run(
            engine, path, model_name="m", model_version="1", as_of=as_of, value_horizon_days=365
        )
        assert run.value_horizon_days == 365
    with engine.connect() as conn:
        for cid, *_ in RUN2:
            s = q.latest(conn, cid)
            unknown = q.StoredValue(**NO_PREDICTION, horizon_days=365)  # type: ignore[arg-type]
            assert s.value == (unknown if cid == "c" else stored_value(cid))
            assert s.next_stage_probabilities == next_probabilities(cid)  # beside the forecast
        assert [h.value for h in q.history(conn, "a")] == [stored_value("a")] * 2
        assert q.get_run(conn).value_horizon_days == 365
    last = _write(engine, tmp_path, RUN2, "2025-01-31", suffix=suffix)
    assert last.value_horizon_days is None
    with engine.connect() as conn:
        assert q.latest(conn, "a").value is None
        assert q.history(conn, "a")[1].value == stored_value("a")
        assert q.latest(conn, "a").risk_since == "2024-12-31T00:00:00Z"  # carried over
        assert [r.value_horizon_days for r in q.list_runs(conn)] == [None, 365, 365]


def test_a_log_without_amounts_and_an_unknown_horizon(engine: sa.Engine, tmp_path: Path) -> None:
    path = scores_file(tmp_path / "s.parquet", RUN1, value=True, amounts=False)
    run = write_run(engine, path, model_name="m", model_version="1", as_of="2024-11-30")
    assert run.value_horizon_days is None
    with engine.connect() as conn:
        got = q.latest(conn, "b").value
    assert got == q.StoredValue(**customer_value("b", amounts=False), horizon_days=None)  # type: ignore[arg-type]
    assert got.expected_spend is None and got.expected_purchases is not None  # type: ignore[union-attr]


def test_value_for_only_some_columns_is_not_kept(engine: sa.Engine, tmp_path: Path) -> None:
    path = scores_file(tmp_path / "part.parquet", RUN1, value=True)
    pd.read_parquet(path).drop(columns="next_purchase_date").to_parquet(path, index=False)
    run = write_run(engine, path, model_name="m", model_version="1", as_of="2024-11-30",
                    value_horizon_days=365)  # fmt: skip
    assert run.value_horizon_days is None
    with engine.connect() as conn:
        assert q.latest(conn, "a").value is None
        assert not q.has_value(conn, run.run_id)


def test_dates_and_timestamps_are_kept_as_iso_dates(tmp_path: Path) -> None:
    eng = open_store(tmp_path / "scores.db")
    path = scores_file(tmp_path / "d.parquet", RUN1, value=True, without_value=("d",))
    frame = pd.read_parquet(path)
    frame["next_purchase_date"] = pd.to_datetime(frame["next_purchase_date"])  # NaT for "d"
    frame.to_parquet(path, index=False)
    write_run(eng, path, model_name="m", model_version="1", as_of="2024-11-30")
    frame["next_purchase_date"] = frame["next_purchase_date"].dt.date  # Arrow date32
    frame.to_parquet(path, index=False)
    write_run(eng, path, model_name="m", model_version="1", as_of="2024-12-31")
    with eng.connect() as conn:
        for run_id in (1, 2):
            got = {
                s.customer_id: s.value
                for s in q.segment(conn, q.SegmentFilter(), run_id=run_id).items
            }
            assert got["a"].next_purchase_date == customer_value("a")["next_purchase_date"]  # type: ignore[union-attr]
            assert got["d"].next_purchase_date is None and got["d"].value_tier == "unknown"  # type: ignore[union-attr]
    eng.dispose()


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        ("expected_purchases", -0.5, "expected_purchases of customer 'c' is -0.5"),
        ("expected_spend", np.inf, "expected_spend of customer 'c' is inf"),
        ("next_purchase_date", "2025-02-30", "date of customer .c. is .2025-02-30.: expected"),
        ("next_purchase_date", "31/01/2025", "expected an ISO date"),
        ("value_tier", "gold", "value_tier of customer 'c' is 'gold'"),
        ("value_tier", None, "value_tier of customer 'c' is None"),
    ],
)
def test_a_value_the_store_cannot_keep_refuses_the_run(
    engine: sa.Engine, tmp_path: Path, column: str, bad: object, message: str
) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30", value=True)
    path = scores_file(tmp_path / "bad.parquet", RUN2, value=True)
    frame = pd.read_parquet(path)
    frame[column] = frame[column].astype(object)
    frame.loc[frame["customer_id"] == "c", column] = bad
    if column.startswith("expected"):
        frame[column] = frame[column].astype("float64")
    frame.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=message) as err:
        # "c" is in the second batch: the first is already in the store, pending
        write_run(engine, path, model_name="m", model_version="2", as_of="2024-12-31",
                  batch_rows=3)  # fmt: skip
    assert "\n" not in str(err.value) and "the run is not stored" in str(err.value)
    with engine.connect() as conn:
        assert [r.run_id for r in q.list_runs(conn)] == [1]
        assert conn.execute(sa.select(sa.func.count()).select_from(scores)).scalar() == 5
        assert q.latest(conn, "c").value == stored_value("c", horizon=None)


def test_segments_by_value_tier(engine: sa.Engine, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")  # no value
    _write(engine, tmp_path, RUN2, "2024-12-31", value=True, without_value=("e",))
    tiers = {c: customer_value(c)["value_tier"] for c, *_ in RUN2 if c != "e"} | {"e": "unknown"}
    with engine.connect() as conn:
        for tier in ("top_1", "top_5", "rest", "unknown", "top_10"):
            want = sorted(c for c, t in tiers.items() if t == tier)
            got = q.segment(conn, q.parse_segment(f"value_tier={tier}")).items
            assert [s.customer_id for s in got] == want
            assert all(s.value is not None and s.value.value_tier == tier for s in got)
        both = q.segment(conn, q.parse_segment("value_tier=top_5,risk=high")).items
        assert [s.customer_id for s in both] == [
            c for c, _, p in RUN2 if tiers[c] == "top_5" and p >= 0.6
        ]
        # a run without value has nobody in any tier
        assert q.segment(conn, q.SegmentFilter(value_tier="unknown"), run_id=1).items == []


@pytest.mark.parametrize("name", ["seg.csv", "seg.parquet"])
def test_export_carries_the_value_of_a_run_that_has_one(
    engine: sa.Engine, tmp_path: Path, name: str
) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    path = scores_file(tmp_path / "v.parquet", RUN2, forecast=True, value=True,
                       without_value=("a",))  # fmt: skip
    write_run(engine, path, model_name="m", model_version="1", as_of="2024-12-31",
              value_horizon_days=180)  # fmt: skip

    def export(segment: str, run_id: int) -> pd.DataFrame:
        out = tmp_path / f"{run_id}-{segment or 'all'}-{name}"
        export_segment(engine, q.parse_segment(segment), out, run_id=run_id)
        if name.endswith("csv"):
            return pd.read_csv(out, dtype={"customer_id": str, "next_purchase_date": str})
        return pd.read_parquet(out)

    frame = export("stage=active", 2)
    assert frame["customer_id"].tolist() == ["007", "a", "b"]
    columns = frame.columns.tolist()
    added = [*VALUE_COLUMNS, "value_horizon_days"]
    assert columns[columns.index("p_next_retention") + 1 : columns.index("as_of")] == added
    row = frame.set_index("customer_id").loc["007"]
    assert row[list(VALUE_COLUMNS)].tolist() == list(customer_value("007").values())
    assert row["value_horizon_days"] == 180
    unknown = frame.set_index("customer_id").loc["a"]
    assert unknown[list(VALUE_COLUMNS[:3])].isna().all() and unknown["value_tier"] == "unknown"
    tier = customer_value("b")["value_tier"]
    assert export(f"value_tier={tier}", 2)["customer_id"].tolist() == sorted(
        c for c, *_ in RUN2 if c != "a" and customer_value(c)["value_tier"] == tier
    )
    # an empty segment of the run still has the columns; a run without value has none
    assert set(added) <= set(export("value_tier=top_99", 2).columns)
    assert not set(added) & set(export("", 1).columns)


# -- schema versions -------------------------------------------------------------------------


def test_an_older_store_is_migrated(url: str, tmp_path: Path) -> None:
    eng = create_store_engine(url)
    assert ensure_schema(eng, target=1) == 0  # a store as version 1 wrote it
    _write(eng, tmp_path, RUN1, "2024-11-30")
    eng.dispose()
    eng = open_store(url)
    with eng.connect() as conn:
        version = conn.execute(sa.select(store_meta.c.value)).scalar()
        assert version == str(SCHEMA_VERSION)
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("customer_scores")}
        assert "ix_customer_scores_segment" in indexes
        assert q.latest(conn, "a").churn_probability == 0.2
    eng.dispose()


def test_a_version_2_store_gains_the_forecast_column(url: str, tmp_path: Path) -> None:
    eng = create_store_engine(url)
    assert ensure_schema(eng, target=2) == 0  # a store as version 2 wrote it
    with eng.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("customer_scores")}
        assert "next_stage_probabilities" not in columns and "stage_probabilities" in columns
    _write(eng, tmp_path, RUN1, "2024-11-30")
    _write(eng, tmp_path, RUN2, "2024-12-31")
    eng.dispose()
    eng = open_store(url)
    with eng.connect() as conn:
        assert conn.execute(sa.select(store_meta.c.value)).scalar() == str(SCHEMA_VERSION)
        columns = {c["name"] for c in sa.inspect(conn).get_columns("customer_scores")}
        assert "next_stage_probabilities" in columns
        assert [r.run_id for r in q.list_runs(conn)] == [2, 1]
        old = q.history(conn, "a")
        assert [(h.churn_probability, h.next_stage_probabilities) for h in old] == [
            (0.7, None),
            (0.2, None),
        ]
    _write(eng, tmp_path, RUN2, "2025-01-31", forecast=True)
    with eng.connect() as conn:
        assert q.latest(conn, "a").next_stage_probabilities == next_probabilities("a")
        assert q.latest(conn, "a").risk_since == "2024-12-31T00:00:00Z"  # carried over
    eng.dispose()


def test_a_version_3_store_with_data_gains_the_value_columns(url: str, tmp_path: Path) -> None:
    eng = create_store_engine(url)
    assert ensure_schema(eng, target=3) == 0  # a store as version 3 wrote it
    _write(eng, tmp_path, RUN1, "2024-11-30", forecast=True)
    _write(eng, tmp_path, RUN2, "2024-12-31", forecast=True)
    with eng.connect() as conn:
        assert not {c["name"] for c in sa.inspect(conn).get_columns("customer_scores")} & set(
            VALUE_COLUMNS
        )
    eng.dispose()
    eng = open_store(url)
    with eng.connect() as conn:
        assert read_version(conn) == SCHEMA_VERSION
        columns = {c["name"] for c in sa.inspect(conn).get_columns("customer_scores")}
        assert set(VALUE_COLUMNS) <= columns
        assert "value_horizon_days" in {
            c["name"] for c in sa.inspect(conn).get_columns("score_runs")
        }
        old = q.history(conn, "a")  # the old scores read back whole, with no value
        assert [(h.churn_probability, h.value) for h in old] == [(0.7, None), (0.2, None)]
        assert old[0].next_stage_probabilities == next_probabilities("a")
        assert [r.value_horizon_days for r in q.list_runs(conn)] == [None, None]
    path = scores_file(tmp_path / "v.parquet", RUN2, value=True)
    write_run(eng, path, model_name="m", model_version="2", as_of="2025-01-31",
              value_horizon_days=365)  # fmt: skip
    with eng.connect() as conn:
        assert q.latest(conn, "a").value == stored_value("a")
        assert q.latest(conn, "a").risk_since == "2024-12-31T00:00:00Z"  # carried over
    eng.dispose()


@pytest.mark.parametrize("before", [2, 3])  # the first migration to lock: 3, or 4 alone
def test_a_migration_gives_up_behind_a_long_reader_on_postgres(
    pg_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: int
) -> None:
    monkeypatch.setattr(schema, "MIGRATION_LOCK_TIMEOUT_MS", 200)
    url = _pg_database(pg_server)
    eng = create_store_engine(url)
    ensure_schema(eng, target=before)
    _write(eng, tmp_path, RUN1, "2024-11-30")
    count = sa.select(sa.func.count()).select_from(scores)
    # a reader of the older version (an export walking pages, say) holds the table
    with eng.connect() as held, held.begin():
        # were the migration to wait for it, the server ends this reader: a failure, not a hang
        held.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = '60s'")
        assert held.execute(count).scalar() == 5
        with pytest.raises(ValueError, match="lock timeout") as err:
            open_store(url)
        assert "\n" not in str(err.value)
        assert held.execute(count).scalar() == 5  # undisturbed
    with eng.connect() as conn:
        assert read_version(conn) == before  # the failed migration left nothing behind
        columns = {c["name"] for c in sa.inspect(conn).get_columns("customer_scores")}
        assert not columns & set(VALUE_COLUMNS)
    eng.dispose()
    eng = open_store(url)  # once the reader is gone
    with eng.connect() as conn:
        assert read_version(conn) == SCHEMA_VERSION
        assert q.latest(conn, "a").next_stage_probabilities is None
        assert q.latest(conn, "a").value is None
    eng.dispose()


def test_a_newer_store_is_refused(url: str) -> None:
    open_store(url).dispose()
    eng = create_store_engine(url)
    with writing(eng) as conn:
        conn.execute(store_meta.update().values(value=str(SCHEMA_VERSION + 1)))
    eng.dispose()
    with pytest.raises(ValueError, match=r"newer than this customer-lifecycle reads") as err:
        open_store(url)
    assert "\n" not in str(err.value)


def test_tables_without_a_version_are_refused(url: str) -> None:
    open_store(url).dispose()
    eng = create_store_engine(url)
    with writing(eng) as conn:
        store_meta.drop(conn)
    eng.dispose()
    with pytest.raises(ValueError, match="no score_store_meta table"):
        open_store(url)


def test_bad_urls_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such folder"):
        open_store(tmp_path / "missing" / "scores.db")
    with pytest.raises(ValueError, match="cannot use score store URL"):
        open_store("nosuchdb://x")
    with pytest.raises(ValueError, match="cannot open score store") as err:
        open_store("postgresql://nobody:secret@127.0.0.1:1/x")
    assert "secret" not in str(err.value)


# -- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seg.csv", "seg.parquet"])  # both file formats
def test_export_a_segment(engine: sa.Engine, tmp_path: Path, name: str) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    _write(engine, tmp_path, RUN2, "2024-12-31")
    out = tmp_path / name
    n, run = export_segment(engine, q.parse_segment("stage=active,risk=high"), out)
    frame = (
        pd.read_csv(out, dtype={"customer_id": str})
        if name.endswith("csv")
        else (pd.read_parquet(out))
    )
    assert (n, run.run_id) == (2, 2)
    assert frame["customer_id"].tolist() == ["a", "b"]
    assert frame["churn_probability"].tolist() == [0.7, 0.8]
    assert frame["p_active"].tolist() == [0.6, 0.6]


def test_export_never_overwrites_the_store(tmp_path: Path) -> None:
    path = tmp_path / "scores.db"
    eng = open_store(path)
    _write(eng, tmp_path, RUN1, "2024-11-30")
    for target in (path, Path(f"{path}-wal")):
        with pytest.raises(ValueError, match="own file"):
            export_segment(eng, q.SegmentFilter(), target, store_file=sqlite_path(path))
    with eng.connect() as conn:
        assert len(q.segment(conn, q.SegmentFilter()).items) == 5
    eng.dispose()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stage", "expected key=value"),  # no value
        ("colour=red", "unknown key 'colour'"),  # not a filter
        ("risk=extreme", "unknown risk band"),  # not a band
        ("min_churn=0.8,max_churn=0.2", "not within"),  # empty range
        ("min_churn=lots", "could not convert"),  # not a number
        ("value_tier=gold", "unknown value tier 'gold'"),  # not a tier
        ("value_tier=top_", "unknown value tier"),  # a tier without its share
    ],
)
def test_bad_segments_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        q.parse_segment(text)


# -- the command line ---------------------------------------------------------------------------


def test_score_store_and_export_commands(
    raw: pd.DataFrame,  # noqa: F811
    bundle: ModelBundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = write_log(raw, tmp_path / "events.parquet")
    model = bundle.save(tmp_path / "model")
    store = tmp_path / "scores.db"
    out = tmp_path / "scores.csv"
    args = ["score", "--events", str(events), "--model", str(model), "--out", str(out)]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--as-of", AS_OF, "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "stored run 1" in result.output
    written = pd.read_csv(out, dtype={"customer_id": str})
    eng = open_store(store)
    with eng.connect() as conn:
        page = q.segment(conn, q.SegmentFilter(), limit=1000)
        assert page.run.customers == len(written) == len(page.items)
        first = written.sort_values("customer_id").iloc[0]
        stored = q.latest(conn, str(first["customer_id"]))
        assert stored.churn_probability == first["churn_probability"]
        assert stored.stage == first["stage"] and stored.model_version == "local"
    eng.dispose()
    # an older as_of is refused before any scoring, in one line
    result = runner.invoke(app, [*args, "--as-of", "2000-01-01", "--store", str(store)])
    assert result.exit_code == 2 and "would be older" in result.output
    exported = tmp_path / "high.parquet"
    result = runner.invoke(
        app, ["export", "--store", str(store), "--segment", "risk=high", "--out", str(exported)]
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(exported)) == int((written["churn_risk"] == "high").sum())
    result = runner.invoke(app, ["export", "--store", str(store), "--out", str(store)])
    assert result.exit_code == 2 and "own file" in result.output


# -- lookups while the store is vacuumed or migrated ------------------------------------------


Lookup = Callable[[sa.Connection, str], float]


def _latest_churn(conn: sa.Connection, customer_id: str) -> float:
    return q.latest(conn, customer_id).churn_probability


def _latest_churn_before_3(conn: sa.Connection, customer_id: str) -> float:
    """The lookup of a server of an older version: every column but the forecast and the
    value, which its store did not have; the migration must not disturb it."""
    later = {"next_stage_probabilities", *VALUE_COLUMNS, "value_horizon_days"}
    known = [c for c in q._SCORE_COLUMNS if c.name not in later]
    row = conn.execute(
        sa.select(*known)
        .join(runs, runs.c.run_id == scores.c.run_id)
        .where(scores.c.customer_id == customer_id, runs.c.state == "complete")
        .order_by(scores.c.run_id.desc())
        .limit(1)
    ).one()
    return float(row.churn_probability)


class Reader(threading.Thread):
    """Looks customers up as the API does (by default ``queries.latest``, one connection
    a request) on an engine of its own, as a server process would, until stopped; keeps
    the time span of every lookup and whatever went wrong."""

    def __init__(
        self, url: str, expected: dict[str, float], lookup: Lookup = _latest_churn
    ) -> None:
        super().__init__(daemon=True)
        self.engine = create_store_engine(url)
        self.expected = expected
        self.lookup = lookup
        self.spans: list[tuple[float, float]] = []
        self.problems: list[object] = []
        self.stop = threading.Event()

    def run(self) -> None:
        ids = itertools.cycle(sorted(self.expected))
        try:
            while not self.stop.is_set():
                cid = next(ids)
                start = time.perf_counter()
                with self.engine.connect() as conn:
                    got = self.lookup(conn, cid)
                self.spans.append((start, time.perf_counter()))
                if got != self.expected[cid]:
                    self.problems.append((cid, got, self.expected[cid]))
        except BaseException as exc:  # reported by the test
            self.problems.append(exc)
        finally:
            self.engine.dispose()

    def lookups_within(self, start: float, end: float) -> int:
        return sum(1 for a, b in self.spans if start <= a and b <= end)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive()
        assert not self.problems, self.problems[:3]


def _many(n: int, p0: float) -> list[tuple[str, str, float]]:
    return [(f"c{i:05d}", STAGES[i % 3], round(p0 + 0.5 * i / n, 6)) for i in range(n)]


def _everything(engine: sa.Engine) -> list[q.StoredScore]:
    with engine.connect() as conn:
        return q.segment(conn, q.SegmentFilter(), limit=q.MAX_PAGE).items + [
            s for c in ("c00000", "c09999") for s in q.history(conn, c)
        ]


def test_lookups_keep_answering_during_a_vacuum(url: str, tmp_path: Path) -> None:
    eng = open_store(url)
    for month, p0 in (("10-31", 0.0), ("11-30", 0.1), ("12-31", 0.2)):
        # keep_runs=1: the two older runs are removed and leave free space behind
        _write(eng, tmp_path, _many(10_000, p0), f"2024-{month}", keep_runs=1)
    expected = {cid: p for cid, _, p in _many(10_000, 0.2)}
    before = _everything(eng)
    path = sqlite_path(url)
    if path is not None:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() > 0
    reader = Reader(url, expected)
    reader.start()
    while not reader.spans and reader.is_alive():
        time.sleep(0.001)
    # Vacuum until a lookup began and ended within one vacuum (a few tries on a busy
    # machine): the reader was answered while the vacuum ran, not after it.
    results, overlapped = [], 0
    for _ in range(20):
        start = time.perf_counter()
        results.append(vacuum(eng))
        overlapped = reader.lookups_within(start, time.perf_counter())
        if overlapped:
            break
    reader.finish()
    assert overlapped > 0 and len(reader.spans) > 10
    assert _everything(eng) == before  # vacuuming changes no answer
    first = results[0]
    if path is not None:
        assert first.size_before is not None and first.size_after is not None
        assert first.size_after <= first.size_before
        assert first.size_after == path.stat().st_size + (
            Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0
        )
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0  # compacted
    else:
        assert first.size_before is first.size_after is first.log_truncated is None
        with eng.connect() as conn:
            done = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'customer_scores' "
                "AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
            ).scalar()
        assert done == 1
    eng.dispose()


def test_lookups_keep_answering_during_a_migration(url: str, tmp_path: Path) -> None:
    eng = create_store_engine(url)
    ensure_schema(eng, target=1)  # a store as version 1 wrote it
    _write(eng, tmp_path, _many(10_000, 0.3), "2024-11-30")
    expected = {cid: p for cid, _, p in _many(10_000, 0.3)}
    # the server reading meanwhile is one of the version the store was written by (a
    # server of this version migrates the store when it opens it)
    reader = Reader(url, expected, _latest_churn_before_3)
    reader.start()
    while not reader.spans and reader.is_alive():
        time.sleep(0.001)
    overlapped = 0
    for _ in range(20):  # as above: until a lookup fell within a migration
        start = time.perf_counter()
        assert ensure_schema(eng) == 1
        overlapped = reader.lookups_within(start, time.perf_counter())
        if overlapped:
            break
        with writing(eng) as conn:  # back to version 1, to migrate again
            conn.exec_driver_sql("DROP INDEX ix_customer_scores_segment")
            for column in ("next_stage_probabilities", *VALUE_COLUMNS):
                conn.exec_driver_sql(f"ALTER TABLE customer_scores DROP COLUMN {column}")
            conn.exec_driver_sql("ALTER TABLE score_runs DROP COLUMN value_horizon_days")
            conn.execute(store_meta.update().values(value="1"))
    reader.finish()
    assert overlapped > 0
    with eng.connect() as conn:
        assert conn.execute(sa.select(store_meta.c.value)).scalar() == str(SCHEMA_VERSION)
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("customer_scores")}
        assert "ix_customer_scores_segment" in indexes
        assert q.latest(conn, "c00001").next_stage_probabilities is None
        assert q.latest(conn, "c00001").value is None
        assert q.latest(conn, "c00001").churn_probability == expected["c00001"]
    eng.dispose()


def test_vacuum_command(tmp_path: Path) -> None:
    store = tmp_path / "scores.db"
    eng = open_store(store)
    for month in ("10-31", "11-30"):
        _write(eng, tmp_path, _many(2_000, 0.1), f"2024-{month}", keep_runs=1)
    eng.dispose()
    runner = CliRunner()
    result = runner.invoke(app, ["vacuum", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"vacuumed score store sqlite:///{store}")
    before, after = re.search(r"([\d.,]+) MB -> ([\d.,]+) MB", result.output).groups()  # type: ignore[union-attr]
    assert float(after) < float(before)
    assert len(result.output.strip().splitlines()) == 1
    eng = open_store(store)
    with eng.connect() as conn:
        assert q.latest(conn, "c01999").churn_probability == _many(2_000, 0.1)[-1][2]
    eng.dispose()
    # errors are one line and exit 2; no empty store is created to be vacuumed
    missing = tmp_path / "nothing.db"
    result = runner.invoke(app, ["vacuum", "--store", str(missing)])
    assert result.exit_code == 2 and "no score store at" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not missing.exists()
    result = runner.invoke(app, ["vacuum", "--store", "postgresql://nobody:secret@127.0.0.1:1/x"])
    assert result.exit_code == 2 and "cannot open score store" in result.output
    assert "secret" not in result.output
    empty = create_store_engine(tmp_path / "empty.db")  # a database, but no store in it
    with pytest.raises(ValueError, match="holds no score store"):
        vacuum(empty)
    empty.dispose()


def test_a_vacuum_beside_a_long_reader_keeps_the_log(tmp_path: Path) -> None:
    store = tmp_path / "scores.db"
    eng = open_store(store)
    for month in ("10-31", "11-30"):
        _write(eng, tmp_path, _many(2_000, 0.1), f"2024-{month}", keep_runs=1)
    with eng.connect() as held, held.begin():  # an export walking pages holds its snapshot
        page = q.segment(held, q.SegmentFilter(), limit=10)
        start = time.perf_counter()
        done = vacuum(eng)
        waited = time.perf_counter() - start
        # the reader still reads its snapshot, and the vacuum did not wait it out
        assert q.segment(held, q.SegmentFilter(), limit=10).items == page.items
    assert done.log_truncated is False and waited < 10
    again = vacuum(eng)  # with the reader gone, the log is truncated
    assert again.log_truncated is True and not Path(f"{store}-wal").stat().st_size
    with eng.connect() as conn:
        assert q.latest(conn, "c00000").churn_probability == 0.1
    eng.dispose()


def test_vacuum_command_on_either_database(engine: sa.Engine, url: str, tmp_path: Path) -> None:
    _write(engine, tmp_path, RUN1, "2024-11-30")
    result = CliRunner().invoke(app, ["vacuum", "--store", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("vacuumed score store ")
    assert ("MB -> " in result.output) == ("://" not in url)  # sizes for a SQLite file
    with engine.connect() as conn:
        assert q.latest(conn, "d").churn_probability == 0.9
