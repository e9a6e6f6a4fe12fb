"""Scoring routes: ``POST /v1/scores`` (from raw events) and ``/v1/scores/features``.

The hot path. Each route resolves one dependency (:func:`.deps.scoring_call`: key,
model, body validated from the JSON text) and answers with the scores serialised once
(:func:`_scored`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from customer_lifecycle.serving.predict import MissingFeatures
from customer_lifecycle.serving.routes.deps import (
    UNAUTHORIZED,
    ScoringCall,
    ServerState,
    json_body_doc,
    scoring_call,
)
from customer_lifecycle.serving.schemas import (
    Score,
    ScoreEventsRequest,
    ScoreFeaturesRequest,
    ScoreResponse,
    ValidationErrorBody,
    error_doc,
)
from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

SCORES = "/v1/scores"
SCORES_FEATURES = "/v1/scores/features"
#: Request bodies read by :func:`.deps.scoring_call`, whose schemas the app documents.
BODIES = (ScoreEventsRequest, ScoreFeaturesRequest)
_MAX_MISSING_REPORTED = 20

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("The body cannot be read as JSON text."),
    401: UNAUTHORIZED,
    408: error_doc(
        "The body was not complete within body_timeout_seconds; the connection is closed.",
        Connection="close",
    ),
    413: error_doc("Body, customers per request or events per customer over the limit."),
    422: {"model": ValidationErrorBody, "description": "A field is invalid; `loc` points at it."},
    503: error_doc(
        "No model is loaded yet, too many requests are in progress, or their bodies hold "
        "too many bytes (max_body_bytes_in_flight).",
        **{"Retry-After": "Seconds to wait before retrying."},
    ),
}

EventsCall = Annotated[ScoringCall[ScoreEventsRequest], Depends(scoring_call(ScoreEventsRequest))]
FeaturesCall = Annotated[
    ScoringCall[ScoreFeaturesRequest], Depends(scoring_call(ScoreFeaturesRequest))
]

router = APIRouter(tags=["scoring"])


@router.post(
    SCORES,
    response_model=ScoreResponse,
    responses=_ERRORS,
    summary="Score customers from their raw events",
    openapi_extra=json_body_doc(ScoreEventsRequest),
)
async def score_events(call: EventsCall) -> Response:
    """Stage, stage probabilities, churn probability and risk band, reasons and the
    next best action for every customer, from events strictly before ``as_of``."""
    state, model, body = call.state, call.model, call.body
    counts = [len(c.events) for c in body.customers]
    _check_counts(state, len(body.customers), counts)
    as_of = body.as_of or datetime.now(UTC)
    scores = await _run(state, sum(counts), model.score_events, body.customers, as_of)
    return _scored(call, "events", scores, as_of)


@router.post(
    SCORES_FEATURES,
    response_model=ScoreResponse,
    responses=_ERRORS,
    summary="Score customers from precomputed features",
    openapi_extra=json_body_doc(ScoreFeaturesRequest),
)
async def score_features(call: FeaturesCall) -> Response:
    """The same scores from feature vectors (``GET /v1/model`` lists the names).
    A missing feature is a 422 naming it. Features carry no time: the value's
    ``next_purchase_date`` is null."""
    state, model, body = call.state, call.model, call.body
    _check_counts(state, len(body.customers))
    try:
        scores = await _run(state, len(body.customers), model.score_features, body.customers)
    except MissingFeatures as exc:
        raise RequestValidationError(
            [
                {
                    "type": "missing",
                    "loc": ("body", "customers", i, "features", name),
                    "msg": f"Field required: the model needs feature {name!r}",
                    "input": None,
                }
                for i, name in exc.missing[:_MAX_MISSING_REPORTED]
            ]
        ) from None
    return _scored(call, "features", scores, None)


def _scored(
    call: ScoringCall[Any], endpoint: str, scores: list[Score], as_of: datetime | None
) -> Response:
    """Count the scored customers and answer with the scores, serialised by pydantic once.

    The scores are built from validated inputs by our own code, so FastAPI's second
    validation of the response model (documented on the route) is skipped.
    """
    call.state.metrics.customers.labels(endpoint).inc(len(scores))
    model = call.model
    response = ScoreResponse.model_construct(
        model_name=model.name, model_version=model.version, as_of=as_of, scores=scores
    )
    return Response(response.model_dump_json(), media_type="application/json")


def _check_counts(state: ServerState, customers: int, events: list[int] | None = None) -> None:
    s = state.settings
    if customers > s.max_customers_per_request:
        raise HTTPException(
            413,
            f"{customers} customers in one request; the limit is "
            f"{s.max_customers_per_request} (max_customers_per_request)",
        )
    if events:
        worst = max(range(len(events)), key=events.__getitem__)
        if events[worst] > s.max_events_per_customer:
            raise HTTPException(
                413,
                f"customers[{worst}] has {events[worst]} events; the limit is "
                f"{s.max_events_per_customer} per customer (max_events_per_customer)",
            )


async def _run(state: ServerState, events: int, work: Any, *args: Any) -> Any:
    """Small requests run right here; big ones in a worker thread, so the loop stays free."""
    if events <= state.settings.inline_event_limit:
        return work(*args)
    return await asyncio.to_thread(work, *args)
