"""Reading the score store: a customer's latest score and history, runs, segments and
transitions between two runs. Only complete runs are ever read.

Pages are walked in ``customer_id`` order after a cursor that names the run it was taken
from, so a client paging through a segment keeps reading the same run even when a newer
one completes meanwhile (:func:`encode_cursor`). Each function runs its queries on the
connection it is given, so a page is read from one snapshot.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from customer_lifecycle.scoring.bundle import RISK_BANDS
from customer_lifecycle.scoring.store.schema import (
    VALUE_TIER_PATTERN,
    runs,
    scores,
    utc_text,
)
from customer_lifecycle.scoring.store.writer import RunInfo, run_info
from sqlalchemy import Connection, and_, bindparam, func, or_, select

MAX_PAGE = 1000


class NotFound(LookupError):
    """An unknown (or no longer kept) run or customer."""


@dataclass(frozen=True)
class StoredValue:
    """A customer's value over the value horizon of a run, as ``lifecycle score`` gave it."""

    #: Expected number of purchases within the horizon; None without a prediction.
    expected_purchases: float | None
    #: Expected spend within the horizon; None without a prediction or purchase amounts.
    expected_spend: float | None
    #: Expected date of the next purchase, ``YYYY-MM-DD``; None without a prediction.
    next_purchase_date: str | None
    #: ``top_1``, ``top_5``, ..., ``rest``, or ``unknown`` (no prediction).
    value_tier: str
    #: Days after ``as_of`` the expectations cover; None when the store was not told.
    horizon_days: int | None


@dataclass(frozen=True)
class StoredScore:
    """One customer's score in one run."""

    customer_id: str
    run_id: int
    as_of: str
    model_name: str
    model_version: str
    stage: str
    stage_probabilities: dict[str, float]
    #: Probability of each stage the model's horizon after ``as_of``; None when the run's
    #: model has no forecast or the customer had no history to forecast from.
    next_stage_probabilities: dict[str, float] | None
    churn_probability: float
    churn_risk: str
    churn_rank: float
    stage_churn_rank: float
    stage_since: str
    risk_since: str
    #: The customer's value; None when the run's model has no value model.
    value: StoredValue | None = None


@dataclass(frozen=True)
class SegmentFilter:
    """Filters of a segment; ``None`` is no filter. Times are UTC text (``utc_text``)."""

    stage: str | None = None
    risk: str | None = None
    min_churn: float | None = None
    max_churn: float | None = None
    stage_changed_since: str | None = None
    risk_changed_since: str | None = None
    value_tier: str | None = None


@dataclass(frozen=True)
class Transition:
    """A customer whose stage or risk band differs between two runs."""

    customer_id: str
    from_stage: str
    to_stage: str
    from_risk: str
    to_risk: str
    from_churn_probability: float
    to_churn_probability: float


@dataclass
class Page:
    """Items of one page, the run(s) they come from, and the cursor of the next page."""

    run: RunInfo
    items: list[Any] = field(default_factory=list)
    next_cursor: str | None = None
    from_run: RunInfo | None = None


_SCORE_COLUMNS = (
    scores.c.customer_id,
    scores.c.run_id,
    runs.c.as_of,
    runs.c.model_name,
    runs.c.model_version,
    scores.c.stage,
    scores.c.stage_probabilities,
    scores.c.next_stage_probabilities,
    scores.c.churn_probability,
    scores.c.churn_risk,
    scores.c.churn_rank,
    scores.c.stage_churn_rank,
    scores.c.stage_since,
    scores.c.risk_since,
    scores.c.expected_purchases,
    scores.c.expected_spend,
    scores.c.next_purchase_date,
    scores.c.value_tier,
    runs.c.value_horizon_days,
)
_COMPLETE = runs.c.state == "complete"

# The lookup: one short range of the primary key (customer_id, run_id), newest run first.
_HISTORY = (
    select(*_SCORE_COLUMNS)
    .join(runs, runs.c.run_id == scores.c.run_id)
    .where(scores.c.customer_id == bindparam("customer_id"), _COMPLETE)
    .order_by(scores.c.run_id.desc())
    .limit(bindparam("limit"))
)


def latest(conn: Connection, customer_id: str) -> StoredScore:
    """The customer's score in the newest complete run it appears in; else NotFound."""
    row = conn.execute(_HISTORY, {"customer_id": customer_id, "limit": 1}).first()
    if row is None:
        raise NotFound(f"no score for customer {customer_id!r}")
    return _score(row)


def history(conn: Connection, customer_id: str, *, limit: int = MAX_PAGE) -> list[StoredScore]:
    """The customer's scores in every kept complete run, newest first; else NotFound."""
    rows = conn.execute(_HISTORY, {"customer_id": customer_id, "limit": limit}).all()
    if not rows:
        raise NotFound(f"no score for customer {customer_id!r}")
    return [_score(r) for r in rows]


def list_runs(conn: Connection, *, limit: int = 100) -> list[RunInfo]:
    """Complete runs, newest first."""
    q = select(runs).where(_COMPLETE).order_by(runs.c.run_id.desc()).limit(limit)
    return [run_info(r._mapping) for r in conn.execute(q)]


def get_run(conn: Connection, run_id: int | None = None, *, skip: int = 0) -> RunInfo:
    """Run ``run_id`` if complete, else the newest complete run (``skip`` back); NotFound."""
    q = select(runs).where(_COMPLETE)
    if run_id is not None:
        q = q.where(runs.c.run_id == run_id)
    row = conn.execute(q.order_by(runs.c.run_id.desc()).offset(skip).limit(1)).first()
    if row is None:
        what = "the score store has no complete run" if run_id is None else f"no run {run_id}"
        raise NotFound(what + (" before the newest" if skip else ""))
    return run_info(row._mapping)


def has_forecast(conn: Connection, run_id: int) -> bool:
    """Whether any customer of the run has a stage forecast (the run's model had one).

    Stops at the first such customer; a run without a forecast is read to its end, along
    the index by run.
    """
    q = (
        select(scores.c.customer_id)
        .where(scores.c.run_id == run_id, scores.c.next_stage_probabilities.is_not(None))
        .limit(1)
    )
    return conn.execute(q).first() is not None


def has_value(conn: Connection, run_id: int) -> bool:
    """Whether the run's scores have a customer value (its model had a value model).

    As :func:`has_forecast`: a run with value answers at its first customer.
    """
    q = (
        select(scores.c.customer_id)
        .where(scores.c.run_id == run_id, scores.c.value_tier.is_not(None))
        .limit(1)
    )
    return conn.execute(q).first() is not None


def encode_cursor(run_id: int, after: str, from_run: int | None = None) -> str:
    """An opaque cursor: the run(s) of the walk and the last customer id returned."""
    doc: dict[str, Any] = {"r": run_id, "a": after}
    if from_run is not None:
        doc["f"] = from_run
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, int | None]:
    """``(run_id, after, from_run)`` of a cursor; ValueError if it is not one of ours."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        run_id, after, from_run = int(doc["r"]), str(doc["a"]), doc.get("f")
        return run_id, after, None if from_run is None else int(from_run)
    except (ValueError, KeyError, TypeError):
        raise ValueError("invalid cursor: pass next_cursor of the previous page as is") from None


def parse_segment(text: str) -> SegmentFilter:
    """A segment from ``key=value`` pairs separated by commas (``lifecycle export``).

    Keys: ``stage``, ``risk``, ``min_churn``, ``max_churn``, ``stage_changed_since``,
    ``risk_changed_since``, ``value_tier``. ValueError names a bad pair.
    """
    keys = (
        "stage",
        "risk",
        "min_churn",
        "max_churn",
        "stage_changed_since",
        "risk_changed_since",
        "value_tier",
    )
    given: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not value:
            raise ValueError(f"segment {text!r}: expected key=value, got {part!r}")
        if key not in keys:
            raise ValueError(f"segment {text!r}: unknown key {key!r}; use one of {', '.join(keys)}")
        given[key] = value
    try:
        for key in ("min_churn", "max_churn"):
            if key in given:
                given[key] = float(given[key])
        for key in ("stage_changed_since", "risk_changed_since"):
            if key in given:
                given[key] = utc_text(given[key])
    except ValueError as exc:
        raise ValueError(f"segment {text!r}: {exc}") from None
    return check_segment(SegmentFilter(**given))


def check_segment(seg: SegmentFilter) -> SegmentFilter:
    """The segment, or ValueError for an unknown risk band or value tier, or an empty
    probability range."""
    if seg.risk is not None and seg.risk not in RISK_BANDS:
        raise ValueError(f"unknown risk band {seg.risk!r}; use one of {', '.join(RISK_BANDS)}")
    if seg.value_tier is not None and not re.fullmatch(VALUE_TIER_PATTERN, seg.value_tier):
        raise ValueError(
            f"unknown value tier {seg.value_tier!r}; use top_<percent> (top_1, top_5, ...), "
            "rest or unknown"
        )
    lo = 0.0 if seg.min_churn is None else seg.min_churn
    hi = 1.0 if seg.max_churn is None else seg.max_churn
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0 and lo <= hi):
        raise ValueError(f"churn probability range [{lo}, {hi}] is not within [0, 1]")
    return seg


def segment(
    conn: Connection,
    seg: SegmentFilter,
    *,
    run_id: int | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    """One page of the customers of a run (default: the newest) that match ``seg``.

    Raises NotFound for an unknown run, or when the run of the cursor is no longer kept.
    """
    after = None
    if cursor is not None:
        run_id, after, _ = decode_cursor(cursor)
    run = get_run(conn, run_id)
    q = (
        select(*_SCORE_COLUMNS)
        .join(runs, runs.c.run_id == scores.c.run_id)
        .where(scores.c.run_id == run.run_id, *_segment_conditions(seg))
        .order_by(scores.c.customer_id)
        .limit(limit + 1)
    )
    if after is not None:
        q = q.where(scores.c.customer_id > after)
    rows = conn.execute(q).all()
    page = Page(run=run, items=[_score(r) for r in rows[:limit]])
    if len(rows) > limit:
        page.next_cursor = encode_cursor(run.run_id, page.items[-1].customer_id)
    return page


def _segment_conditions(seg: SegmentFilter) -> list[Any]:
    c = scores.c
    out: list[Any] = []
    if seg.stage is not None:
        out.append(c.stage == seg.stage)
    if seg.risk is not None:
        out.append(c.churn_risk == seg.risk)
    if seg.min_churn is not None:
        out.append(c.churn_probability >= seg.min_churn)
    if seg.max_churn is not None:
        out.append(c.churn_probability <= seg.max_churn)
    if seg.stage_changed_since is not None:
        out.append(c.stage_since >= seg.stage_changed_since)
    if seg.risk_changed_since is not None:
        out.append(c.risk_since >= seg.risk_changed_since)
    if seg.value_tier is not None:
        out.append(c.value_tier == seg.value_tier)
    return out


def transitions(
    conn: Connection,
    *,
    from_run: int | None = None,
    to_run: int | None = None,
    from_stage: str | None = None,
    to_stage: str | None = None,
    from_risk: str | None = None,
    to_risk: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    """One page of customers whose stage or risk band changed from one run to another.

    By default from the second newest complete run to the newest. Only customers scored
    in both runs are compared. Raises NotFound for an unknown run.
    """
    after = None
    if cursor is not None:
        to_run, after, from_run = decode_cursor(cursor)
    to = get_run(conn, to_run)
    if from_run is None:
        prior = select(func.max(runs.c.run_id)).where(_COMPLETE, runs.c.run_id < to.run_id)
        found = conn.execute(prior).scalar()
        if found is None:
            raise NotFound(f"no complete run before run {to.run_id} to compare with")
        from_run = int(found)
    frm = get_run(conn, from_run)
    a, b = scores.alias("a"), scores.alias("b")
    q = (
        select(
            b.c.customer_id,
            a.c.stage.label("from_stage"),
            b.c.stage.label("to_stage"),
            a.c.churn_risk.label("from_risk"),
            b.c.churn_risk.label("to_risk"),
            a.c.churn_probability.label("from_p"),
            b.c.churn_probability.label("to_p"),
        )
        .join(a, and_(a.c.customer_id == b.c.customer_id, a.c.run_id == frm.run_id))
        .where(
            b.c.run_id == to.run_id,
            or_(a.c.stage != b.c.stage, a.c.churn_risk != b.c.churn_risk),
        )
        .order_by(b.c.customer_id)
        .limit(limit + 1)
    )
    for column, value in (
        (a.c.stage, from_stage),
        (b.c.stage, to_stage),
        (a.c.churn_risk, from_risk),
        (b.c.churn_risk, to_risk),
    ):
        if value is not None:
            q = q.where(column == value)
    if after is not None:
        q = q.where(b.c.customer_id > after)
    rows = conn.execute(q).all()
    items = [
        Transition(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6])) for r in rows[:limit]
    ]
    page = Page(run=to, items=items, from_run=frm)
    if len(rows) > limit:
        page.next_cursor = encode_cursor(to.run_id, items[-1].customer_id, frm.run_id)
    return page


def _score(row: Any) -> StoredScore:
    m = row._mapping
    return StoredScore(
        customer_id=m["customer_id"],
        run_id=int(m["run_id"]),
        as_of=m["as_of"],
        model_name=m["model_name"],
        model_version=m["model_version"],
        stage=m["stage"],
        stage_probabilities=json.loads(m["stage_probabilities"]),
        next_stage_probabilities=(
            None
            if m["next_stage_probabilities"] is None
            else json.loads(m["next_stage_probabilities"])
        ),
        churn_probability=float(m["churn_probability"]),
        churn_risk=m["churn_risk"],
        churn_rank=float(m["churn_rank"]),
        stage_churn_rank=float(m["stage_churn_rank"]),
        stage_since=m["stage_since"],
        risk_since=m["risk_since"],
        value=_value(m),
    )


def _value(m: Any) -> StoredValue | None:
    """The value of a score row; None for a run without value (its tier is NULL)."""
    if m["value_tier"] is None:
        return None
    purchases, spend, horizon = (
        m["expected_purchases"],
        m["expected_spend"],
        m["value_horizon_days"],
    )
    return StoredValue(
        expected_purchases=None if purchases is None else float(purchases),
        expected_spend=None if spend is None else float(spend),
        next_purchase_date=m["next_purchase_date"],
        value_tier=m["value_tier"],
        horizon_days=None if horizon is None else int(horizon),
    )


__all__ = [
    "MAX_PAGE",
    "NotFound",
    "Page",
    "SegmentFilter",
    "StoredScore",
    "StoredValue",
    "Transition",
    "check_segment",
    "decode_cursor",
    "encode_cursor",
    "get_run",
    "has_forecast",
    "has_value",
    "history",
    "latest",
    "list_runs",
    "parse_segment",
    "segment",
    "transitions",
]
