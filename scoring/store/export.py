"""``lifecycle export``: a segment of the score store as a CSV or Parquet file for CRM import.

The file is written through :class:`features.sink.TableAppender` (a hidden temporary file
renamed into place once complete) from one read snapshot, a page at a time, so memory
stays bounded; the store's own files are never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from customer_lifecycle.features.io import table_format
from customer_lifecycle.features.sink import TableAppender
from customer_lifecycle.scoring.bundle import NEXT_PREFIX
from customer_lifecycle.scoring.store.queries import (
    SegmentFilter,
    StoredScore,
    get_run,
    has_forecast,
    has_value,
    segment,
)
from customer_lifecycle.scoring.store.writer import RunInfo
from sqlalchemy import Engine

PAGE_ROWS = 10_000


def export_segment(
    engine: Engine,
    seg: SegmentFilter,
    out: str | Path,
    *,
    run_id: int | None = None,
    store_file: Path | None = None,
) -> tuple[int, RunInfo]:
    """Write the customers of ``seg`` in a run (default: the newest) to ``out``.

    Columns: ``customer_id, stage, churn_probability, churn_risk, churn_rank,
    stage_churn_rank, stage_since, risk_since, p_<stage>...``, then ``p_next_<stage>...``
    when the run has a stage forecast (empty for a customer without one), then
    ``expected_purchases, expected_spend, next_purchase_date, value_tier,
    value_horizon_days`` when the run has customer value (empty where missing; the
    horizon is empty when the store was not told it), then ``as_of, model_name,
    model_version``. Returns the number of rows and the run.

    Raises
    ------
    ValueError
        For an output name that is not ``.csv``/``.csv.gz``/``.parquet``, or one that is
        the store's own file (``store_file``) or one of its companions.
    """
    out = Path(out)
    if store_file is not None:
        target = out.resolve()
        own = {store_file, *(store_file.with_name(store_file.name + s) for s in _COMPANIONS)}
        if target in own:
            raise ValueError(f"--out {out} is the score store's own file: choose another name")
    table_format(out)
    sink = TableAppender(out)
    n, cursor = 0, None
    try:
        with engine.connect() as conn:
            # decided once for the run: every page, and an empty export, has the same columns
            chosen = get_run(conn, run_id).run_id
            forecast, value = has_forecast(conn, chosen), has_value(conn, chosen)
            while True:
                page = segment(conn, seg, run_id=run_id, cursor=cursor, limit=PAGE_ROWS)
                if page.items:
                    sink.append(_frame(page.items, page.run, forecast, value))
                n += len(page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
        sink.commit(empty=_frame([], page.run, forecast, value))
    except BaseException:
        sink.discard()
        raise
    return n, page.run


_COMPANIONS = ("-wal", "-shm", "-journal")


def _frame(items: list[StoredScore], run: RunInfo, forecast: bool, value: bool) -> pd.DataFrame:
    stages = run.stages
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series([s.customer_id for s in items], dtype="str"),
            "stage": pd.Series([s.stage for s in items], dtype="str"),
            "churn_probability": pd.Series([s.churn_probability for s in items], dtype="float64"),
            "churn_risk": pd.Series([s.churn_risk for s in items], dtype="str"),
            "churn_rank": pd.Series([s.churn_rank for s in items], dtype="float64"),
            "stage_churn_rank": pd.Series([s.stage_churn_rank for s in items], dtype="float64"),
            "stage_since": pd.Series([s.stage_since for s in items], dtype="str"),
            "risk_since": pd.Series([s.risk_since for s in items], dtype="str"),
        }
    )
    for stage in stages:
        frame[f"p_{stage}"] = pd.Series(
            [s.stage_probabilities.get(stage) for s in items], dtype="float64"
        )
    if forecast:
        for stage in stages:
            frame[f"{NEXT_PREFIX}{stage}"] = pd.Series(
                [
                    None
                    if s.next_stage_probabilities is None
                    else s.next_stage_probabilities.get(stage)
                    for s in items
                ],
                dtype="float64",
            )
    if value:
        values = [s.value for s in items]
        for name in ("expected_purchases", "expected_spend"):
            frame[name] = pd.Series(
                [None if v is None else getattr(v, name) for v in values], dtype="float64"
            )
        for name in ("next_purchase_date", "value_tier"):
            frame[name] = pd.Series(
                [None if v is None else getattr(v, name) for v in values], dtype="str"
            )
        frame["value_horizon_days"] = pd.Series(
            [run.value_horizon_days] * len(items), dtype="Int64"
        )
    frame["as_of"] = pd.Series([s.as_of for s in items], dtype="str")
    frame["model_name"] = pd.Series([s.model_name for s in items], dtype="str")
    frame["model_version"] = pd.Series([s.model_version for s in items], dtype="str")
    return frame


__all__ = ["export_segment"]
