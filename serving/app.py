"""The HTTP API (docs/api.md): :func:`create_app` builds a FastAPI app from :class:`Settings`.

The routes live in :mod:`serving.routes`, one ``APIRouter`` per area; this module puts
the app together: settings, the per-app :class:`~serving.routes.deps.ServerState` on
``app.state.server``, the ``lifespan`` that loads the model (and polls for new versions),
the OpenAPI document, the middleware and the routes. Nothing lives in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from customer_lifecycle.serving.metrics import Metrics
from customer_lifecycle.serving.middleware import (
    ANY_ANSWERS,
    LIMITED_ANSWERS,
    LimitsMiddleware,
    RequestContextMiddleware,
)
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.registry import Loader, ModelHolder, load_served_model
from customer_lifecycle.serving.routes import customers, operations, scores
from customer_lifecycle.serving.routes import model as model_routes
from customer_lifecycle.serving.routes.deps import ServerState, body_schemas
from customer_lifecycle.serving.schemas import field_errors
from customer_lifecycle.serving.settings import Settings, get_settings
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

log = logging.getLogger(__name__)

#: The routers, in the order the OpenAPI document lists their paths.
ROUTERS: tuple[APIRouter, ...] = (
    scores.router,
    model_routes.router,
    customers.router,
    operations.router,
)
#: Requests counted against ``max_in_flight`` (the ones that score or load a model).
_LIMITED = frozenset(
    {("POST", scores.SCORES), ("POST", scores.SCORES_FEATURES), ("POST", model_routes.RELOAD)}
)


def create_app(
    settings: Settings | None = None,
    *,
    loader: Loader | None = None,
    store_url: str | None = None,
) -> FastAPI:
    """Build the app.

    Parameters
    ----------
    settings
        Defaults to :func:`get_settings` (the environment).
    loader
        ``loader(uri, ref) -> ServedModel``; defaults to loading from the registry or a
        bundle directory with the configured playbook.
    store_url
        Score store of the lookup routes; defaults to ``LIFECYCLE_STORE_URL`` (none: 404).
    """
    settings = settings or get_settings()
    playbook = load_playbook(settings.playbook_path)
    metrics = Metrics()
    load = loader or partial(
        load_served_model,
        playbook=playbook,
        reasons=settings.reasons,
        reasons_method=settings.reasons_method,
    )
    state = ServerState(
        settings=settings,
        keys=() if settings.allow_anonymous else settings.all_api_keys(),
        holder=ModelHolder(settings.model_uri, load, metrics),
        metrics=metrics,
    )

    store = customers.StoreHandle.from_env(store_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        if state.holder.uri is not None:
            await state.holder.try_reload()
            interval = settings.reload_interval_seconds
            if interval > 0:
                state.tasks.append(asyncio.create_task(state.holder.poll(interval)))
        else:
            log.warning("no model URI configured: scoring answers 503")
        try:
            yield
        finally:
            state.draining = True
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            await store.close()

    app = FastAPI(
        title="Customer lifecycle API",
        version="1",
        summary="Lifecycle stage and churn risk per customer, with reasons and a next best action.",
        lifespan=lifespan,
    )
    # Set here rather than in the lifespan: the server's SIGTERM handler needs it before
    # the app starts (serving.server).
    app.state.server = state
    app.state.store = store
    for router in ROUTERS:
        _include(app, router)
    app.openapi = _model_aware_openapi(app, state)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, _invalid_fields)
    app.add_middleware(
        LimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
        body_timeout=settings.body_timeout_seconds,
        max_in_flight=settings.max_in_flight,
        retry_after=settings.retry_after_seconds,
        limited=_LIMITED,
        metrics=metrics,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, routes=_route_paths())
    return app


async def _invalid_fields(request: Request, exc: Exception) -> Response:
    """422 with every invalid field, never the offending values in full (see
    :func:`~serving.schemas.field_errors`): FastAPI's own handler echoes the input, and
    fails with a 500 on a NaN it cannot write as JSON."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)


def _include(app: FastAPI, router: APIRouter) -> None:
    """Put the router's routes on the app's own router, as ``include_router`` used to.

    FastAPI's ``include_router`` now keeps an included router as a branch resolved per
    request (matched, then matched again to be handled): about 10 us more per request
    here, measured on every route. The routes are complete as the router declared them
    (its tags and dependencies are applied at declaration), since they are included with
    no prefix or other options. What that gives up: ``app.dependency_overrides``, which
    nothing here uses (tests run the real dependencies), does not reach them.
    """
    app.router.routes.extend(router.routes)


def _route_paths() -> frozenset[str]:
    """The paths of our routes: metrics name these, and count any other path as ``other``."""
    return frozenset(r.path for router in ROUTERS for r in router.routes if isinstance(r, APIRoute))


def _model_aware_openapi(app: FastAPI, state: ServerState) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that lists the served model's features as required properties.

    The feature names belong to the model, not to the code, so the schema of
    ``/v1/scores/features`` is completed from the model loaded when it is asked for
    (rebuilt after a swap).
    """
    cache: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = state.holder.current
        key = None if model is None else f"{model.name}/{model.version}"
        if key not in cache:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schema["components"]["schemas"].update(body_schemas(*scores.BODIES))
            _document_limits(schema)
            if model is not None:
                vector = schema["components"]["schemas"]["CustomerFeatures"]["properties"]
                value = {"anyOf": [{"type": "number"}, {"type": "null"}]}
                vector["features"] = {
                    **vector["features"],
                    "properties": {
                        name: {**value, "description": text}
                        for name, text in zip(model.feature_names, model.descriptions, strict=True)
                    },
                    "required": list(model.feature_names),
                }
            cache.clear()
            cache[key] = schema
        return cache[key]

    return openapi


def _document_limits(schema: dict[str, Any]) -> None:
    """Add the answers of :class:`LimitsMiddleware` to every operation they can reach."""
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            statuses = LIMITED_ANSWERS if (method.upper(), path) in _LIMITED else ANY_ANSWERS
            for status, doc in statuses.items():
                responses.setdefault(status, doc)
