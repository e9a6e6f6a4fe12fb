"""Routes for operators, open without a key: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from customer_lifecycle.serving.metrics import CONTENT_TYPE
from customer_lifecycle.serving.routes.deps import State
from customer_lifecycle.serving.schemas import Health, Readiness
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up (it may still have no model: see ``/readyz``)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model yet, or shutting down."}},
    summary="Readiness",
)
async def readyz(state: State) -> Response:
    """200 when a model is loaded and the server is not shutting down, else 503."""
    model = state.holder.current
    if state.draining:
        ready = Readiness(status="draining", model_version=model.version if model else None)
    elif model is None:
        ready = Readiness(status="no_model")
    else:
        return JSONResponse(Readiness(status="ready", model_version=model.version).model_dump())
    return JSONResponse(ready.model_dump(), status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
    summary="Prometheus metrics",
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
