"""What the routes depend on: the app's state and the dependencies that hand it out.

Everything an app instance needs (settings, keys, model holder, metrics) is one
:class:`ServerState` on ``app.state.server``, set by :func:`serving.app.create_app`; the
model reaches the holder in the app's ``lifespan``. Routes take what they need through
the ``Annotated`` aliases below (:data:`State`, :data:`CurrentModel`, :data:`Authorized`,
:func:`scoring_call`); nothing lives in module globals. Dependencies are ``async def``:
FastAPI would run plain functions in its thread pool, a thread hop per dependency per
request.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

from customer_lifecycle.serving.metrics import Metrics
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.registry import ModelHolder
from customer_lifecycle.serving.schemas import MAX_FIELD_ERRORS, error_doc
from customer_lifecycle.serving.settings import Settings
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError


@dataclass
class ServerState:
    """Per-app state: settings, accepted keys, the model holder, metrics, draining flag."""

    settings: Settings
    keys: tuple[bytes, ...]
    holder: ModelHolder
    metrics: Metrics
    draining: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server_state)]


def _model_or_503(state: ServerState) -> ServedModel:
    model = state.holder.current
    if model is None:
        raise HTTPException(
            503,
            "no model is loaded yet; retry later",
            headers={"Retry-After": str(state.settings.retry_after_seconds)},
        )
    return model


async def current_model(state: State) -> ServedModel:
    """The model for this request, read once; 503 while none is loaded."""
    return _model_or_503(state)


CurrentModel = Annotated[ServedModel, Depends(current_model)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from LIFECYCLE_API_KEYS or LIFECYCLE_API_KEYS_FILE.",
)


async def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Accept ``Authorization: Bearer KEY`` for any configured key, else 401."""
    _check_key(state, credentials)


def _check_key(state: ServerState, credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 unless the credentials carry a configured key.

    Every key is compared, in constant time, whatever matched: the time taken says
    nothing about which key or how much of it was right. Keys are never logged.
    """
    if not state.keys:  # allow_anonymous
        return
    token = b"" if credentials is None else credentials.credentials.encode()
    ok = False
    for key in state.keys:
        ok |= hmac.compare_digest(key, token)
    if not ok:
        raise HTTPException(
            401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )


#: ``dependencies=`` of a route that needs an API key but not its value.
Authorized = [Depends(require_api_key)]

_Body = TypeVar("_Body", bound=BaseModel)
#: Bodies up to this size are validated on the event loop (at most a few milliseconds).
_INLINE_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class ScoringCall(Generic[_Body]):
    """What a scoring route needs, resolved by one dependency (see :func:`scoring_call`)."""

    state: ServerState
    model: ServedModel
    body: _Body


def scoring_call(schema: type[_Body]) -> Callable[..., Any]:
    """One dependency for a scoring route: API key, model, then the body.

    One dependency instead of a chain of small ones: FastAPI's dependency resolution
    costs tens of microseconds per dependency and request. The checks come in the order
    a client should fix them: 401 (key), 503 (no model yet), then 400 / 422 (body).

    The body is validated by pydantic straight from the JSON text
    (``model_validate_json``), several times faster than FastAPI's ``json.loads``
    followed by validation of the Python objects: for one customer with 50 events,
    about 0.1 ms instead of 0.6. Errors are FastAPI's 422 with ``loc`` starting at
    ``body``, as usual; a body that is not JSON text is a 400. The route documents the
    schema with :func:`json_body_doc`, and the app adds it to the components with
    :func:`body_schemas`.
    """

    async def resolve(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ScoringCall[_Body]:
        state: ServerState = request.app.state.server
        _check_key(state, credentials)
        model = _model_or_503(state)
        raw = await request.body()
        try:
            if len(raw) <= _INLINE_BODY_BYTES:
                body = schema.model_validate_json(raw)
            else:
                # Parsing a large body takes up to a second: in a worker thread, the
                # event loop goes on reading other requests and answering probes.
                body = await asyncio.to_thread(schema.model_validate_json, raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise HTTPException(400, f"the body is not JSON text: {errors[0]['msg']}") from None
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in errors[:MAX_FIELD_ERRORS]]
            ) from None
        return ScoringCall(state, model, body)

    return resolve


def json_body_doc(schema: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting the request body of a :func:`scoring_call` route."""
    ref = {"$ref": f"#/components/schemas/{schema.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def body_schemas(*schemas: type[BaseModel]) -> dict[str, Any]:
    """Component schemas of :func:`scoring_call` bodies and the models they contain."""
    out: dict[str, Any] = {}
    for schema in schemas:
        doc = schema.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(doc.pop("$defs", {}))
        out[schema.__name__] = doc
    return out


#: The documented answers of :func:`require_api_key` and :func:`current_model`.
UNAUTHORIZED = error_doc("Missing or invalid API key.", **{"WWW-Authenticate": "Bearer"})
UNAVAILABLE = error_doc(
    "No model is loaded yet, or too many requests are in progress.",
    **{"Retry-After": "Seconds to wait before retrying."},
)
