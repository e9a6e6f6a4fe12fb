"""Pure ASGI middleware: request ids, timing, metrics and access logs; size and load limits.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the cost per request to a few function
calls, and lets the limits answer before the body is read.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from time import perf_counter
from typing import Any

from customer_lifecycle.serving.metrics import Metrics
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("serving.access")

REQUEST_ID = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The id :class:`RequestContextMiddleware` gave this request."""
    return str(scope.get("state", {}).get("request_id", ""))


class RequestContextMiddleware:
    """Give every request an id, then time, count and log it.

    The id is the client's ``X-Request-ID`` when it is a short token, else a new UUID;
    it is echoed in the response. ``Server-Timing: app;dur=<ms>`` tells the client how
    long the server took up to the response headers.

    Parameters
    ----------
    routes
        Paths reported under their own name in metrics; others count as ``other``, so
        scanners cannot blow up the number of time series.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        rid = _client_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took = (perf_counter() - start) * 1000.0
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid.encode()),
                    (b"server-timing", f"app;dur={took:.3f}".encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            took = perf_counter() - start
            path = scope["path"]
            route = path if path in self.routes else "other"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(took)
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": route,
                    "status": status,
                    "duration_ms": round(took * 1000.0, 3),
                },
            )


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_ID.match(text) else None
    return None


class LimitsMiddleware:
    """Refuse bodies over ``max_body_bytes`` (413) and scoring beyond ``max_in_flight`` (503).

    The body limit checks ``Content-Length`` before anything is read and then counts
    the bytes actually received, since a chunked body declares no length and the
    server itself sets no limit. The load limit is a counter acquired without waiting:
    a request over the limit is answered at once with ``Retry-After``, never queued.
    The event loop is single-threaded, so the counter needs no lock.

    Parameters
    ----------
    limited
        ``(method, path)`` pairs that count towards ``max_in_flight``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_in_flight: int,
        retry_after: int,
        limited: frozenset[tuple[str, str]],
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self.limited = limited
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send, 413, _too_large(limit, f"Content-Length {declared}"))
            return
        counted = (scope["method"], scope["path"]) in self.limited
        if counted:
            if self.in_flight >= self.max_in_flight:
                detail = (
                    f"server busy: {self.in_flight} scoring requests in progress "
                    f"(limit {self.max_in_flight}); retry after {self.retry_after} s"
                )
                await _send_error(
                    send, 503, detail, [(b"retry-after", str(self.retry_after).encode())]
                )
                return
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while reading the body on
                    # to its handler, which answers 413 with this detail.
                    raise HTTPException(413, _too_large(limit, f"more than {limit} bytes"))
            return message

        try:
            await self.app(scope, receive_counted, send)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)


def _too_large(limit: int, what: str) -> str:
    return f"request body too large: {what}; the limit is {limit} bytes (max_body_bytes)"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
