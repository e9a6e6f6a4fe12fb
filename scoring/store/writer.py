"""Writing one batch run into the score store, visible only once complete.

:func:`write_run` reads the scores file ``lifecycle score`` wrote (Parquet or CSV) in
record batches, so memory stays bounded for millions of customers: a first pass reads
two columns to rank every churn probability (overall and within the predicted stage), a
second inserts the rows in batches under a run whose state is ``pending``. The run then
becomes ``complete`` in one transaction, together with the change times carried over
from the previous run and the removal of runs beyond ``keep_runs``; readers only ever
see complete runs, so a lookup during the write answers from the previous run.

Optional parts of a scores file are kept when the file has all of their columns: the stage
forecast (``p_next_<stage>`` of every stage) and the customer value (:data:`VALUE_COLUMNS`).
A value the store cannot stand behind (a negative or infinite expectation, a date that is
not ``YYYY-MM-DD``, a missing or unknown tier) refuses the whole run in one line rather
than storing it as "no value": such a value is a broken model or file, and a run is
never half-written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from customer_lifecycle.features.contract import CUSTOMER_ID
from customer_lifecycle.features.io import table_format
from customer_lifecycle.scoring.bundle import NEXT_PREFIX, RISK_BANDS
from customer_lifecycle.scoring.store.schema import (
    VALUE_COLUMNS,
    VALUE_TIER_PATTERN,
    runs,
    scores,
    utc_text,
    writing,
)
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

DEFAULT_KEEP_RUNS = 10
BATCH_ROWS = 100_000
_FIXED = (CUSTOMER_ID, "stage", "churn_probability", "churn_risk")


@dataclass(frozen=True)
class RunInfo:
    """One run of the store (what ``GET /v1/runs`` lists)."""

    run_id: int
    model_name: str
    model_version: str
    as_of: str
    customers: int
    risk_bands: dict[str, int]
    stages: tuple[str, ...]
    created_at: str
    completed_at: str | None
    #: Days ahead the value of the run's scores looks; None without value or when unknown.
    value_horizon_days: int | None = None


def latest_as_of(engine: Engine) -> str | None:
    """``as_of`` of the newest complete run, or None for an empty store."""
    with engine.connect() as conn:
        return conn.execute(
            select(runs.c.as_of)
            .where(runs.c.state == "complete")
            .order_by(runs.c.run_id.desc())
            .limit(1)
        ).scalar()


def check_as_of(engine: Engine, as_of: object) -> None:
    """Refuse a run older than the store's newest one: history is kept in time order."""
    newest = latest_as_of(engine)
    if newest is not None and utc_text(as_of) < newest:
        raise ValueError(
            f"the score store already has a run as of {newest[:19]}; a run as of "
            f"{utc_text(as_of)[:19]} would be older (runs are kept in time order)"
        )


def write_run(
    engine: Engine,
    scores_path: str | Path,
    *,
    model_name: str,
    model_version: str,
    as_of: object,
    keep_runs: int = DEFAULT_KEEP_RUNS,
    batch_rows: int = BATCH_ROWS,
    value_horizon_days: int | None = None,
) -> RunInfo:
    """Write the scores file of one run into the store; the run is visible once complete.

    Parameters
    ----------
    engine
        From :func:`scoring.store.schema.open_store`.
    scores_path
        A complete ``lifecycle score`` output: ``customer_id, stage, churn_probability,
        churn_risk, p_<stage>...`` and, from a model with a stage forecast,
        ``p_next_<stage>...``, and from a model with a value model ``expected_purchases,
        expected_spend, next_purchase_date, value_tier``; Parquet or CSV. The forecast is
        kept when the file has it for every stage (NULL for a customer whose forecast is
        missing), else NULL; the value when the file has all four columns, else NULL (a
        missing expectation or date, NaN or empty, is kept as NULL).
    model_name, model_version
        The model that scored the run.
    as_of
        The run's ``as_of`` (not before the store's newest run).
    keep_runs
        Complete runs kept per store, this one included; older ones are removed.
    batch_rows
        Rows read and inserted per transaction.
    value_horizon_days
        The horizon of the value columns (the model's), kept with the run and returned
        with each value; None when not known. Ignored for a file without value.

    Returns
    -------
    RunInfo
        The run as stored, complete.

    Raises
    ------
    ValueError
        On a file without the score columns, an ``as_of`` older than the newest run,
        ``keep_runs < 1``, a value horizon below one day, or a value the store refuses
        (a negative or infinite ``expected_*``, a ``next_purchase_date`` that is not an
        ISO date, a missing or unknown ``value_tier``). Nothing becomes visible; the
        pending rows are removed.
    """
    if keep_runs < 1:
        raise ValueError(f"--keep-runs must be at least 1, got {keep_runs}")
    if value_horizon_days is not None and value_horizon_days < 1:
        raise ValueError(f"the value horizon must be at least 1 day, got {value_horizon_days}")
    path = Path(scores_path)
    stages, forecast, value = _stages(path)
    check_as_of(engine, as_of)
    as_of_text = utc_text(as_of)
    ranks = _Ranks.of(path, stages)
    bands = dict.fromkeys(RISK_BANDS, 0)
    created = _now()
    # A run without value names no column of version 4 (as its scores leave theirs out),
    # so it can be written into a store of an older version: the migration tests build
    # their older stores so.
    horizon = {"value_horizon_days": value_horizon_days} if value else {}
    with writing(engine) as conn:
        inserted = conn.execute(
            insert(runs).values(
                state="pending",
                model_name=model_name,
                model_version=model_version,
                as_of=as_of_text,
                customers=0,
                risk_bands="{}",
                stages=json.dumps(list(stages)),
                created_at=created,
                **horizon,
            )
        ).inserted_primary_key
        assert inserted is not None
        run_id = int(inserted[0])
    try:
        with engine.connect() as conn:
            previous = _newest_before(conn, run_id)
        n = 0
        for batch in _batches(path, stages, batch_rows, forecast=forecast, value=value):
            rows = _rows(batch, stages, ranks, forecast=forecast, value=value)
            for band, count in batch["churn_risk"].value_counts().items():
                bands[str(band)] = bands.get(str(band), 0) + int(count)
            with writing(engine) as conn:
                _insert(
                    conn,
                    rows,
                    run_id=run_id,
                    previous=previous,
                    as_of=as_of_text,
                    forecast=forecast,
                    value=value,
                )
            n += len(batch)
        with writing(engine) as conn:
            if _newest_before(conn, run_id) != previous:
                raise ValueError(
                    "another run was written into the score store meanwhile; score again"
                )
            flipped = conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.state == "pending")
                .values(
                    state="complete",
                    customers=n,
                    risk_bands=json.dumps(bands),
                    completed_at=_now(),
                )
            ).rowcount
            if flipped != 1:
                raise ValueError(f"run {run_id} was removed from the store while being written")
            _prune(conn, run_id, keep_runs)
    except BaseException:
        with writing(engine) as conn:
            conn.execute(delete(scores).where(scores.c.run_id == run_id))
            conn.execute(delete(runs).where(runs.c.run_id == run_id))
        raise
    known = [c for c in runs.c if value or c.name != "value_horizon_days"]
    with engine.connect() as conn:
        row = conn.execute(select(*known).where(runs.c.run_id == run_id)).one()
    return run_info(row._mapping)


def run_info(row: object) -> RunInfo:
    """A :class:`RunInfo` from a ``score_runs`` row mapping."""
    r = dict(row)  # type: ignore[call-overload]
    return RunInfo(
        run_id=int(r["run_id"]),
        model_name=r["model_name"],
        model_version=r["model_version"],
        as_of=r["as_of"],
        customers=int(r["customers"]),
        risk_bands=json.loads(r["risk_bands"]),
        stages=tuple(json.loads(r["stages"])),
        created_at=r["created_at"],
        completed_at=r["completed_at"],
        value_horizon_days=(
            None if r.get("value_horizon_days") is None else int(r["value_horizon_days"])
        ),
    )


def _now() -> str:
    return utc_text(datetime.now(UTC))


def _stages(path: Path) -> tuple[tuple[str, ...], bool, bool]:
    """The model's stages, from the ``p_<stage>`` columns of the scores file, whether
    the file has the stage forecast ``p_next_<stage>`` of every stage, and whether it has
    every value column.

    ``p_next_<stage>`` (the forecast of a model with a latent-stage model) is not a stage
    when ``p_<stage>`` is a column too.
    """
    if table_format(path) == "parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
    else:
        columns = list(pd.read_csv(path, nrows=0).columns)
    missing = [c for c in _FIXED if c not in columns]
    named = [c[2:] for c in columns if c.startswith("p_")]
    present = set(named)
    present_columns = set(columns)
    stages = tuple(
        s for s in named if not (s.startswith("next_") and s.removeprefix("next_") in present)
    )
    if missing or not stages:
        raise ValueError(
            f"{path} is not a scores file: it lacks {missing or ['p_<stage> columns']}"
        )
    forecast = all(f"{NEXT_PREFIX}{s}" in present_columns for s in stages)
    return stages, forecast, all(c in present_columns for c in VALUE_COLUMNS)


def _batches(
    path: Path,
    stages: tuple[str, ...],
    batch_rows: int,
    columns: list[str] | None = None,
    *,
    forecast: bool = False,
    value: bool = False,
) -> Iterator[pd.DataFrame]:
    """The scores file in frames of at most ``batch_rows`` rows (ids as text)."""
    upcoming = [f"{NEXT_PREFIX}{s}" for s in stages] if forecast else []
    valued = list(VALUE_COLUMNS) if value else []
    wanted = columns or [*_FIXED, *(f"p_{s}" for s in stages), *upcoming, *valued]
    if table_format(path) == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as file:
            for batch in file.iter_batches(batch_size=batch_rows, columns=wanted):
                frame = batch.to_pandas()
                if CUSTOMER_ID in frame:
                    frame[CUSTOMER_ID] = frame[CUSTOMER_ID].astype(str)
                yield frame
        return
    dtype = {
        CUSTOMER_ID: str,
        "stage": str,
        "churn_risk": str,
        "next_purchase_date": str,
        "value_tier": str,
    }
    # a missing forecast or value is an empty field (pandas, Spark) and must read as NaN;
    # a missing tier stays "" and is refused
    missing = [*upcoming, *valued[:3]]
    with pd.read_csv(
        path,
        usecols=wanted,
        dtype={k: v for k, v in dtype.items() if k in wanted},
        keep_default_na=False,  # an id such as "NA" stays an id
        na_values={c: ["", "nan", "NaN"] for c in missing if c in wanted},
        chunksize=batch_rows,
    ) as reader:
        yield from reader


@dataclass
class _Ranks:
    """Sorted churn probabilities of the whole run and of each stage, for percentile ranks.

    The percentile rank of ``p`` is the percentage of the run's customers (of its stage,
    for the stage rank) whose churn probability is at most ``p``: 100 for the riskiest.
    """

    overall: np.ndarray
    by_stage: dict[str, np.ndarray]

    @classmethod
    def of(cls, path: Path, stages: tuple[str, ...]) -> _Ranks:
        probs, labels = [], []
        for frame in _batches(path, stages, BATCH_ROWS * 5, ["stage", "churn_probability"]):
            probs.append(frame["churn_probability"].to_numpy(np.float64))
            labels.append(frame["stage"].astype(str).to_numpy())
        p = np.concatenate(probs) if probs else np.empty(0)
        codes, names = pd.factorize(np.concatenate(labels) if labels else np.empty(0, object))
        order = np.lexsort((p, codes))  # by stage, then probability
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        by_stage = {str(name): p[order[bounds[i] : bounds[i + 1]]] for i, name in enumerate(names)}
        return cls(np.sort(p), by_stage)

    def rank(self, p: np.ndarray, stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        overall = _percentile(self.overall, p)
        within = np.empty_like(overall)
        codes, names = pd.factorize(stage)
        for i, name in enumerate(names):
            mask = codes == i
            within[mask] = _percentile(self.by_stage[str(name)], p[mask])
        return overall, within


def _percentile(sorted_values: np.ndarray, p: np.ndarray) -> np.ndarray:
    return 100.0 * np.searchsorted(sorted_values, p, side="right") / max(len(sorted_values), 1)


def _rows(
    batch: pd.DataFrame,
    stages: tuple[str, ...],
    ranks: _Ranks,
    *,
    forecast: bool = False,
    value: bool = False,
) -> list[tuple[object, ...]]:
    """``(customer_id, stage, churn_probability, churn_risk, stage_probabilities JSON,
    churn_rank, stage_churn_rank)`` per customer, in customer order, then with
    ``forecast`` the ``next_stage_probabilities`` JSON (None where a value is missing),
    then with ``value`` the checked :data:`VALUE_COLUMNS` (None where missing)."""
    batch = batch.sort_values(CUSTOMER_ID, kind="stable")  # locality in the primary key
    p = batch["churn_probability"].to_numpy(np.float64)
    stage = batch["stage"].astype(str).to_numpy()
    overall, within = ranks.rank(p, stage)
    # The JSON text is joined by Arrow, whose float-to-text cast gives the shortest text
    # that reads back to the same float (as repr does): json.dumps of a dict per customer
    # would cost several seconds per million.
    columns = [
        batch[CUSTOMER_ID].tolist(),
        stage.tolist(),
        p.tolist(),
        batch["churn_risk"].astype(str).tolist(),
        _json_texts(batch, [f"p_{s}" for s in stages], stages),
        overall.tolist(),
        within.tolist(),
    ]
    if forecast:
        upcoming = [f"{NEXT_PREFIX}{s}" for s in stages]
        columns.append(_json_texts(batch, upcoming, stages, missing_is_null=True))
    if value:
        columns += _value_columns(batch)
    return list(zip(*columns, strict=True))


def _value_columns(batch: pd.DataFrame) -> list[list[object]]:
    """The :data:`VALUE_COLUMNS` of a batch as stored: expectations as floats and the date
    as ``YYYY-MM-DD`` text, None where missing; the tier as given.

    Raises ValueError, naming a customer, for a negative or infinite expectation, a date
    that is not one, or a tier that is missing or not a tier label.
    """
    ids = batch[CUSTOMER_ID]
    out: list[list[object]] = []
    for name in VALUE_COLUMNS[:2]:
        try:
            x = batch[name].to_numpy(np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers in the scores file") from None
        bad = ~np.isnan(x) & ~(np.isfinite(x) & (x >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name} of customer {ids.iloc[i]!r} is {x[i]}: expected values must be "
                "finite and not negative (the run is not stored; the scores file is kept)"
            )
        out.append(pa.array(x, from_pandas=True).to_pylist())  # NaN -> None
    out.append(_iso_dates(batch["next_purchase_date"], ids))
    tiers = _text(batch["value_tier"], "value_tier")
    ok = pc.fill_null(pc.match_substring_regex(tiers, VALUE_TIER_PATTERN), False)
    _refuse_first(
        ok,
        ids,
        tiers,
        "value_tier",
        "expected top_<percent>, rest or unknown",
    )
    out.append(tiers.to_pylist())
    return out


def _text(column: pd.Series, name: str) -> pa.Array:
    """A text column as an Arrow string array (null where missing)."""
    try:
        array = pa.array(column, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise ValueError(f"{name} must be text in the scores file") from None
    if pa.types.is_null(array.type):
        return array.cast(pa.string())
    return array


def _refuse_first(ok: pa.Array, ids: pd.Series, values: pa.Array, name: str, want: str) -> None:
    """ValueError naming the first customer whose ``ok`` is false."""
    flags = ok.to_numpy(zero_copy_only=False)
    if not flags.all():
        i = int(np.argmax(~flags))
        raise ValueError(
            f"{name} of customer {ids.iloc[i]!r} is {values[i].as_py()!r}: {want} "
            "(the run is not stored; the scores file is kept)"
        )


def _iso_dates(column: pd.Series, ids: pd.Series) -> list[object]:
    """Dates as ``YYYY-MM-DD`` text (None where missing) from text, dates or timestamps;
    ValueError naming a customer whose text is not an ISO date."""
    if pd.api.types.is_datetime64_any_dtype(column):
        column = column.dt.strftime("%Y-%m-%d")
    array = _text(column, "next_purchase_date")
    if pa.types.is_date(array.type):  # a Parquet date column
        array = pc.strftime(array.cast(pa.timestamp("s")), format="%Y-%m-%d")
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise ValueError("next_purchase_date must be dates in the scores file")
    # Arrow's parser rolls 2025-02-30 over to March and takes 2025-1-5: a date is one
    # that prints back as given
    parsed = pc.strptime(array, format="%Y-%m-%d", unit="s", error_is_null=True)
    same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), array)
    ok = pc.or_kleene(pc.fill_null(same, False), pc.is_null(array))
    _refuse_first(ok, ids, array, "next_purchase_date", "expected an ISO date YYYY-MM-DD")
    return array.to_pylist()


def _json_texts(
    batch: pd.DataFrame, columns: list[str], keys: tuple[str, ...], *, missing_is_null: bool = False
) -> list[object]:
    """Per row, the JSON object ``{key: value of column, ...}``; with ``missing_is_null``
    None for a row with a missing (NaN) value, which the join turns into null."""
    parts: list[object] = []
    for i, (column, key) in enumerate(zip(columns, keys, strict=True)):
        parts.append(("{" if i == 0 else ",") + json.dumps(key) + ":")
        values = pa.array(batch[column].to_numpy(np.float64), from_pandas=missing_is_null)
        parts.append(pc.cast(values, pa.string()))
    return pc.binary_join_element_wise(*parts, "}", "").to_pylist()


_COLUMNS = (
    "customer_id, stage, churn_probability, churn_risk, stage_probabilities, churn_rank, "
    "stage_churn_rank"
)

# optional columns and their types in the temporary table
_FORECAST = {"next_stage_probabilities": "TEXT"}
_VALUE = dict(
    zip(VALUE_COLUMNS, ("DOUBLE PRECISION", "DOUBLE PRECISION", "TEXT", "TEXT"), strict=True)
)
_INCOMING = (
    "CREATE TEMPORARY TABLE incoming_scores (customer_id TEXT, stage TEXT, "
    "churn_probability DOUBLE PRECISION, churn_risk TEXT, stage_probabilities TEXT, "
    "churn_rank DOUBLE PRECISION, stage_churn_rank DOUBLE PRECISION{})"
)


def _insert(
    conn: Connection,
    rows: list[tuple[object, ...]],
    *,
    run_id: int,
    previous: int | None,
    as_of: str,
    forecast: bool = False,
    value: bool = False,
) -> None:
    """Insert one batch through the driver's ``executemany`` (SQLAlchemy's per-row
    parameter handling costs seconds per million rows).

    The change times: a customer in the same stage (risk band) as in the previous run keeps
    that run's ``stage_since`` (``risk_since``), others get this run's ``as_of``. They are
    filled while inserting, from a temporary table joined to the previous run by primary
    key, rather than by updating the new rows afterwards (which rewrites every row).

    With ``forecast`` each row goes on with ``next_stage_probabilities``, with ``value``
    with the :data:`VALUE_COLUMNS`; without, those columns are left out and stay NULL, so
    a run without them costs what it did before (and a store of an older version that
    lacks them can still be written).
    """
    extra = {**(_FORECAST if forecast else {}), **(_VALUE if value else {})}
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join([mark] * (7 + len(extra)))
    columns = ", ".join([_COLUMNS, *extra])
    if previous is None:
        conn.exec_driver_sql(
            f"INSERT INTO customer_scores ({columns}, run_id, stage_since, risk_since) "
            f"VALUES ({marks}, {int(run_id)}, '{as_of}', '{as_of}')",
            rows,  # type: ignore[arg-type]
        )
        return
    conn.exec_driver_sql(_INCOMING.format("".join(f", {c} {t}" for c, t in extra.items())))
    try:
        conn.exec_driver_sql(f"INSERT INTO incoming_scores VALUES ({marks})", rows)  # type: ignore[arg-type]
        fresh = f"'{as_of}'"
        upcoming = "".join(f"t.{c}, " for c in extra)
        conn.exec_driver_sql(
            f"INSERT INTO customer_scores ({columns}, run_id, stage_since, risk_since) "
            "SELECT t.customer_id, t.stage, t.churn_probability, t.churn_risk, "
            f"t.stage_probabilities, t.churn_rank, t.stage_churn_rank, {upcoming}"
            f"{int(run_id)}, "
            f"CASE WHEN p.stage = t.stage THEN p.stage_since ELSE {fresh} END, "
            f"CASE WHEN p.churn_risk = t.churn_risk THEN p.risk_since ELSE {fresh} END "
            "FROM incoming_scores AS t LEFT JOIN customer_scores AS p "
            f"ON p.customer_id = t.customer_id AND p.run_id = {int(previous)} "
            "ORDER BY t.customer_id"
        )
    finally:
        conn.exec_driver_sql("DROP TABLE incoming_scores")


def _newest_before(conn: Connection, run_id: int) -> int | None:
    """The newest complete run older than ``run_id``: the one change times carry over from."""
    found = conn.execute(
        select(func.max(runs.c.run_id)).where(runs.c.state == "complete", runs.c.run_id < run_id)
    ).scalar()
    return None if found is None else int(found)


def _prune(conn: Connection, run_id: int, keep_runs: int) -> None:
    """Remove complete runs beyond ``keep_runs`` and pending runs older than this one.

    A pending run older than the one completing was left by an interrupted write.
    """
    newest = (
        select(runs.c.run_id)
        .where(runs.c.state == "complete")
        .order_by(runs.c.run_id.desc())
        .limit(keep_runs)
    )
    keep = set(conn.execute(newest).scalars())
    older = conn.execute(select(runs.c.run_id).where(runs.c.run_id <= run_id)).scalars()
    for old in [r for r in older if r not in keep]:
        conn.execute(delete(scores).where(scores.c.run_id == old))
        conn.execute(delete(runs).where(runs.c.run_id == old))


__all__ = ["DEFAULT_KEEP_RUNS", "RunInfo", "check_as_of", "latest_as_of", "run_info", "write_run"]
