"""Pure ASGI middleware: request ids, timing, metrics and access logs; size and load limits.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the cost per request to a few function
calls, and lets the limits answer before the body is read.
"""

from __future__ import annotations

import asyncio
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
    """Read scoring bodies under a deadline and a byte budget, then limit the scoring.

    For the ``limited`` requests (the ones that score or load a model) the whole body
    is read here, before the app sees the request, in this order:

    - ``Content-Length`` over ``max_body_bytes``: 413 before anything is read; a body
      without a declared length (chunked) is counted as it arrives, 413 past the limit.
    - The body must be complete within ``body_timeout_seconds`` of the request's
      arrival, else 408 and the connection is closed: a client that declares a length
      and then trickles or stops holds nothing for longer than that.
    - The bytes held by bodies being read or served, server-wide, stay within
      ``max_body_bytes_in_flight``: a chunk that would go over it turns its request into
      503 + ``Retry-After``. The rest of that body is read and dropped first, so that
      the answer reaches the client (closing a socket with unread data in it makes the
      kernel reset the connection, losing the answer). Bytes are reserved as they
      arrive, so a client holds only what it has actually sent.
    - Only then, with the body complete, a scoring slot (``max_in_flight``) is taken,
      without waiting: over the limit, 503 + ``Retry-After`` at once. The slots bound
      the scoring work, not the waiting for slow clients.

    Other requests only get the size limit, counted as their bodies are read. The
    event loop is single-threaded, so the counters need no lock.

    Parameters
    ----------
    limited
        ``(method, path)`` pairs that are read here and count towards ``max_in_flight``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_body_bytes_in_flight: int,
        body_timeout: float,
        max_in_flight: int,
        retry_after: int,
        limited: frozenset[tuple[str, str]],
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_body_bytes_in_flight = max_body_bytes_in_flight
        self.body_timeout = body_timeout
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self.limited = limited
        self.metrics = metrics
        self.in_flight = 0
        self.buffered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # The body is not read: close the connection rather than read it to its end.
            await _send_error(send, 413, _too_large(limit, f"Content-Length {declared}"), _CLOSE)
            return
        if (scope["method"], scope["path"]) not in self.limited:
            await self.app(scope, _counted(receive, limit), send)
            return
        held = 0  # bytes of this request reserved in self.buffered
        try:
            chunks: list[bytes] = []
            try:
                async with asyncio.timeout(self.body_timeout):
                    while True:
                        message = await receive()
                        if message["type"] != "http.request":
                            return  # the client went away: nothing to answer
                        chunk: bytes = message.get("body", b"")
                        if held + len(chunk) > limit:
                            detail = _too_large(limit, f"more than {limit} bytes")
                            await _send_error(send, 413, detail, _CLOSE)
                            return
                        if self.buffered + len(chunk) > self.max_body_bytes_in_flight:
                            self.buffered -= held
                            held = 0
                            chunks.clear()
                            more = message.get("more_body", False)
                            await self._busy(send, receive if more else None)
                            return
                        self.buffered += len(chunk)
                        held += len(chunk)
                        chunks.append(chunk)
                        if not message.get("more_body", False):
                            break
            except TimeoutError:
                detail = (
                    f"request body not complete within {self.body_timeout:g} s "
                    "(body_timeout_seconds)"
                )
                await _send_error(send, 408, detail, _CLOSE)
                return
            if self.in_flight >= self.max_in_flight:
                await _send_error(
                    send,
                    503,
                    f"server busy: {self.in_flight} scoring requests in progress "
                    f"(limit {self.max_in_flight}); retry after {self.retry_after} s",
                    [(b"retry-after", str(self.retry_after).encode())],
                )
                return
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            del chunks
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
            try:
                await self.app(scope, _replay(body, receive), send)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
        finally:
            self.buffered -= held

    async def _busy(self, send: Send, receive: Receive | None) -> None:
        """503 for a body over the byte budget, after reading the rest of it and dropping it.

        Draining stays within the body deadline (the caller's ``asyncio.timeout``); the
        bytes pass through without being kept.
        """
        while receive is not None:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        detail = (
            f"server busy: request bodies in progress hold more than "
            f"{self.max_body_bytes_in_flight} bytes (max_body_bytes_in_flight); "
            f"retry after {self.retry_after} s"
        )
        await _send_error(send, 503, detail, [(b"retry-after", str(self.retry_after).encode())])


_CLOSE = [(b"connection", b"close")]


def _answer(description: str, **headers: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    doc: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref}},
    }
    if headers:
        doc["headers"] = {
            k: {"description": v, "schema": {"type": "string"}} for k, v in headers.items()
        }
    return doc


_TOO_LARGE = _answer("The body is larger than max_body_bytes.")
#: OpenAPI ``responses`` of :class:`LimitsMiddleware` for every request ...
ANY_ANSWERS: dict[str, dict[str, Any]] = {"413": _TOO_LARGE}
#: ... and for the ``limited`` ones (the app adds them to the document).
LIMITED_ANSWERS: dict[str, dict[str, Any]] = {
    "408": _answer(
        "The body was not complete within body_timeout_seconds; the connection is closed.",
        Connection="close",
    ),
    "413": _TOO_LARGE,
    "503": _answer(
        "Too many requests in progress, or their bodies hold too many bytes.",
        **{"Retry-After": "Seconds to wait before retrying."},
    ),
}


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes have arrived."""
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

    return receive_counted


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives the body already read as one message, then waits as usual."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


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
