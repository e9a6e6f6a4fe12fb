"""Score store routes: a customer's latest score and history, runs, segments, transitions.

They read the store that ``lifecycle score --store`` writes (:mod:`scoring.store`), opened
in the app's ``lifespan`` from ``lifecycle serve --store URL`` (or ``LIFECYCLE_STORE_URL``)
and kept on ``app.state.store``; they answer with or without a model loaded, and 404 when
the server has no store (there is nothing to find: retrying, as a 503 asks, cannot
help). A lookup by id is one indexed query; on SQLite it runs on the event loop (a WAL
read never waits for a writer, and a thread hop would cost more than the query), on
other databases and for pages in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from customer_lifecycle.scoring.store import queries
from customer_lifecycle.scoring.store.schema import VALUE_TIER_PATTERN, open_store, utc_text
from customer_lifecycle.scoring.store.writer import RunInfo
from customer_lifecycle.serving.routes.deps import UNAUTHORIZED, Authorized
from customer_lifecycle.serving.schemas import CustomerValue, error_doc
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Connection, Engine

CUSTOMER = "/v1/customers/{customer_id}"
HISTORY = "/v1/customers/{customer_id}/history"
RUNS = "/v1/runs"
SEGMENTS = "/v1/segments"
TRANSITIONS = "/v1/transitions"

T = TypeVar("T")


class StoreSettings(BaseSettings):
    """``LIFECYCLE_STORE_URL``: the score store the lookup routes read (none: 404)."""

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", extra="ignore", frozen=True)

    store_url: str | None = Field(
        default=None,
        description="Score store for the lookup routes: a SQLite file path or a SQLAlchemy "
        "URL (postgresql+psycopg://...). Without one they answer 404.",
    )


class StoreHandle:
    """The app's store: opened (created or migrated) in the lifespan, disposed at the end."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.engine: Engine | None = None
        self.inline = False

    @classmethod
    def from_env(cls, url: str | None = None) -> StoreHandle:
        """``url``, else ``LIFECYCLE_STORE_URL`` (read when the app is built, not imported)."""
        return cls(url if url is not None else StoreSettings().store_url)

    async def open(self) -> None:
        if self.url is not None:
            self.engine = await asyncio.to_thread(open_store, self.url)
            self.inline = self.engine.dialect.name == "sqlite"

    async def close(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.dispose)
            self.engine = None


async def store_handle(request: Request) -> StoreHandle:
    handle: StoreHandle | None = getattr(request.app.state, "store", None)
    if handle is None or handle.engine is None:
        raise HTTPException(404, "no score store is configured (lifecycle serve --store URL)")
    return handle


Store = Annotated[StoreHandle, Depends(store_handle)]


async def _read(store: StoreHandle, query: Callable[[Connection], T], *, inline: bool) -> T:
    """Run ``query`` on a pooled connection; NotFound is a 404, a bad cursor a 400."""

    def run() -> T:
        assert store.engine is not None
        with store.engine.connect() as conn:
            return query(conn)

    try:
        return run() if inline and store.inline else await asyncio.to_thread(run)
    except queries.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


# -- response schemas ----------------------------------------------------------------------


class CustomerScore(BaseModel):
    """A customer's score in one batch run."""

    customer_id: str
    stage: str = Field(description="Predicted lifecycle stage.")
    stage_probabilities: dict[str, float] = Field(description="Probability of each stage.")
    next_stage_probabilities: dict[str, float] | None = Field(
        default=None,
        description="Probability of each stage horizon_days after as_of, from the run's "
        "model's latent-stage forecast; null when that model has no forecast or the "
        "customer had no history before as_of.",
    )
    churn_probability: float = Field(ge=0, le=1)
    churn_risk: Literal["low", "medium", "high"]
    churn_rank: float = Field(
        ge=0,
        le=100,
        description="Percentile rank of churn probability in the run: the percentage of "
        "customers at or below this one (100: the riskiest).",
    )
    stage_churn_rank: float = Field(
        ge=0, le=100, description="The same percentile rank among the customers of its stage."
    )
    stage_since: datetime = Field(description="as_of of the run in which it entered its stage.")
    risk_since: datetime = Field(description="as_of of the run in which it entered its band.")
    as_of: datetime = Field(description="as_of of the run.")
    run_id: int
    model_name: str
    model_version: str
    value: CustomerValue | None = Field(
        default=None,
        description="The customer's value over the model's value horizon; null when the "
        "run's model has no value model (or the run was stored before value existed).",
    )


class CustomerHistory(BaseModel):
    customer_id: str
    scores: list[CustomerScore] = Field(description="One per kept run, newest first.")


class Run(BaseModel):
    """A complete batch run of the store."""

    run_id: int
    as_of: datetime
    model_name: str
    model_version: str
    customers: int
    risk_bands: dict[str, int]
    stages: list[str]
    created_at: datetime
    completed_at: datetime | None
    value_horizon_days: int | None = Field(
        default=None,
        description="Value horizon of the run's scores in days; null when they have no "
        "value or the store was not told it.",
    )


class RunList(BaseModel):
    runs: list[Run] = Field(description="Complete runs, newest first.")


class SegmentPage(BaseModel):
    run: Run
    customers: list[CustomerScore]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (same run); null on the last page."
    )


class CustomerTransition(BaseModel):
    customer_id: str
    from_stage: str
    to_stage: str
    from_risk: str
    to_risk: str
    from_churn_probability: float
    to_churn_probability: float


class TransitionPage(BaseModel):
    from_run: Run
    to_run: Run
    transitions: list[CustomerTransition]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (same runs); null on the last page."
    )


def _score(s: queries.StoredScore) -> CustomerScore:
    return CustomerScore(
        customer_id=s.customer_id,
        stage=s.stage,
        stage_probabilities=s.stage_probabilities,
        next_stage_probabilities=s.next_stage_probabilities,
        churn_probability=s.churn_probability,
        churn_risk=s.churn_risk,  # type: ignore[arg-type]
        churn_rank=s.churn_rank,
        stage_churn_rank=s.stage_churn_rank,
        stage_since=s.stage_since,  # type: ignore[arg-type]
        risk_since=s.risk_since,  # type: ignore[arg-type]
        as_of=s.as_of,  # type: ignore[arg-type]
        run_id=s.run_id,
        model_name=s.model_name,
        model_version=s.model_version,
        value=None if s.value is None else _value(s.value),
    )


def _value(v: queries.StoredValue) -> CustomerValue:
    return CustomerValue(
        expected_purchases=v.expected_purchases,
        expected_spend=v.expected_spend,
        next_purchase_date=v.next_purchase_date,  # type: ignore[arg-type]
        value_tier=v.value_tier,
        horizon_days=v.horizon_days,
    )


def _run(r: RunInfo) -> Run:
    return Run(
        run_id=r.run_id,
        as_of=r.as_of,  # type: ignore[arg-type]
        model_name=r.model_name,
        model_version=r.model_version,
        customers=r.customers,
        risk_bands=r.risk_bands,
        stages=list(r.stages),
        created_at=r.created_at,  # type: ignore[arg-type]
        completed_at=r.completed_at,  # type: ignore[arg-type]
        value_horizon_days=r.value_horizon_days,
    )


# -- routes --------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    404: error_doc("The server has no score store (lifecycle serve --store)."),
}
_PAGED: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    400: error_doc("The cursor is not one this API returned, or a filter is out of range."),
    404: error_doc(
        "The run (or the run of the cursor) is unknown or no longer kept, or the server "
        "has no score store."
    ),
    422: {"description": "A query parameter is invalid; `loc` points at it."},
}
CustomerId = Annotated[str, Path(min_length=1, max_length=256, description="The customer's id.")]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_PAGE, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=2048, description="next_cursor of the previous page.")
]
Band = Literal["low", "medium", "high"]

router = APIRouter(tags=["customers"], dependencies=Authorized)


@router.get(
    CUSTOMER,
    response_model=CustomerScore,
    responses={
        **_ERRORS,
        404: error_doc("No kept run has a score for this customer, or there is no store."),
    },
    summary="A customer's latest score",
)
async def customer(customer_id: CustomerId, store: Store) -> CustomerScore:
    """The customer's score in the newest complete run that scored it: stage, stage
    probabilities, the stage forecast (`next_stage_probabilities`, null without one),
    churn probability and band, percentile ranks, `as_of`, model, and the customer's
    `value` (expected purchases and spend over the value horizon, next purchase date,
    value tier; null when the run's model has no value model)."""
    found = await _read(store, lambda c: queries.latest(c, customer_id), inline=True)
    return _score(found)


@router.get(
    HISTORY,
    response_model=CustomerHistory,
    responses={
        **_ERRORS,
        404: error_doc("No kept run has a score for this customer, or there is no store."),
    },
    summary="A customer's scores in every kept run",
)
async def customer_history(customer_id: CustomerId, store: Store) -> CustomerHistory:
    found = await _read(store, lambda c: queries.history(c, customer_id), inline=True)
    return CustomerHistory(customer_id=customer_id, scores=[_score(s) for s in found])


@router.get(RUNS, response_model=RunList, responses=_ERRORS, summary="The kept batch runs")
async def list_runs(store: Store) -> RunList:
    found = await _read(store, queries.list_runs, inline=True)
    return RunList(runs=[_run(r) for r in found])


@router.get(
    SEGMENTS,
    response_model=SegmentPage,
    responses=_PAGED,
    summary="Customers of a segment, a page at a time",
)
async def segments(
    store: Store,
    stage: Annotated[str | None, Query(max_length=256, description="Predicted stage.")] = None,
    risk: Annotated[Band | None, Query(description="Churn risk band.")] = None,
    min_churn: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_churn: Annotated[float | None, Query(ge=0, le=1)] = None,
    stage_changed_since: Annotated[
        datetime | None, Query(description="Entered its stage in a run as of this time or later.")
    ] = None,
    risk_changed_since: Annotated[
        datetime | None, Query(description="Entered its band in a run as of this time or later.")
    ] = None,
    value_tier: Annotated[
        str | None,
        Query(
            max_length=32,
            pattern=VALUE_TIER_PATTERN,
            description="Value tier: top_1, top_5, top_10, top_25, top_50 (the model's "
            "shares), rest or unknown. A run without value has no customer in any tier.",
        ),
    ] = None,
    run_id: Annotated[int | None, Query(ge=1, description="Run (default: the newest).")] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> SegmentPage:
    """Customers of one run (the newest by default) matching every filter given, in
    `customer_id` order. The cursor keeps to the run of the first page, so a page walk
    is not disturbed by a run completing meanwhile."""
    seg = queries.SegmentFilter(
        stage=stage,
        risk=risk,
        min_churn=min_churn,
        max_churn=max_churn,
        stage_changed_since=None if stage_changed_since is None else utc_text(stage_changed_since),
        risk_changed_since=None if risk_changed_since is None else utc_text(risk_changed_since),
        value_tier=value_tier,
    )

    def query(conn: Connection) -> queries.Page:
        return queries.segment(
            conn, queries.check_segment(seg), run_id=run_id, cursor=cursor, limit=limit
        )

    page = await _read(store, query, inline=False)
    return SegmentPage(
        run=_run(page.run),
        customers=[_score(s) for s in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    TRANSITIONS,
    response_model=TransitionPage,
    responses=_PAGED,
    summary="Customers whose stage or risk band changed between two runs",
)
async def transitions(
    store: Store,
    from_run: Annotated[
        int | None, Query(ge=1, description="Default: the run before to_run.")
    ] = None,
    to_run: Annotated[int | None, Query(ge=1, description="Default: the newest run.")] = None,
    from_stage: Annotated[str | None, Query(max_length=256)] = None,
    to_stage: Annotated[str | None, Query(max_length=256)] = None,
    from_risk: Band | None = None,
    to_risk: Band | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> TransitionPage:
    """Customers scored in both runs whose stage or risk band differs (the trigger of a
    campaign: for example `from_stage=retention&to_risk=high`), in `customer_id` order."""

    def query(conn: Connection) -> queries.Page:
        return queries.transitions(
            conn,
            from_run=from_run,
            to_run=to_run,
            from_stage=from_stage,
            to_stage=to_stage,
            from_risk=from_risk,
            to_risk=to_risk,
            cursor=cursor,
            limit=limit,
        )

    page = await _read(store, query, inline=False)
    assert page.from_run is not None
    return TransitionPage(
        from_run=_run(page.from_run),
        to_run=_run(page.run),
        transitions=[CustomerTransition(**vars(t)) for t in page.items],
        next_cursor=page.next_cursor,
    )
