"""The load client of ``benchmarks.serving``: response parsing and open-loop scheduling.

The client's figures are the benchmark's evidence for the API targets, so what it counts
must be right: a response is read to its end whatever its framing, keep-alive is honoured,
a broken connection is one error and is replaced, and a request waiting for a connection
still counts its latency from its due time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

from benchmarks.serving import Target, chunked_end, closed_loop, open_loop, parse_head

# Reads one request, returns the response bytes to write, or None to drop the connection.
Handler = Callable[[int], Awaitable[bytes | None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nserver-timing: app;dur=0.250\r\n\r\n{}"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        # the usual uvicorn response: length, keep-alive by default, our timing
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nserver-timing: app;dur=1.234",
            (200, 12, True, 1.234),
        ),
        # header names in any case, several metrics: the first duration
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
            b"Server-Timing: app;dur=0.5, db;dur=9",
            (503, 0, True, 0.5),
        ),
        # Connection: close ends keep-alive
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3", (200, 3, False, math.nan)),
        # HTTP/1.0 closes unless it asks for keep-alive
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3", (200, 3, False, math.nan)),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3",
            (200, 3, True, math.nan),
        ),
        # a chunked body has no length
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", (200, -1, True, math.nan)),
        # no body at all without a length
        (b"HTTP/1.1 204 No Content", (204, 0, True, math.nan)),
    ],
)
def test_parse_head(head: bytes, expected: tuple[int, int, bool, float]) -> None:
    got = parse_head(head)
    assert got[:3] == expected[:3]
    assert got.server_ms == pytest.approx(expected[3], nan_ok=True)


@pytest.mark.parametrize(
    "head",
    [
        b"SSH-2.0-OpenSSH_9.6",  # not HTTP
        b"HTTP/1.1 200 OK\r\nServer: x",  # a body ended by closing the connection
    ],
)
def test_parse_head_rejects(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_head(head)


def test_chunked_end() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n"
    prefix = b"HEAD"
    whole = prefix + body
    assert chunked_end(whole, len(prefix)) == len(whole)
    # every proper prefix is incomplete
    assert all(chunked_end(whole[:n], len(prefix)) == -1 for n in range(len(prefix), len(whole)))
    # trailer lines before the final blank line
    trailed = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert chunked_end(trailed, 0) == len(trailed)


def test_request_is_encoded_once_with_its_length() -> None:
    t = Target("t", "http://127.0.0.1:8123/v1/scores", b'{"a": 1}', {"Authorization": "Bearer k"})
    head, _, body = t.request().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/scores HTTP/1.1"
    assert b"Host: 127.0.0.1:8123" in lines
    assert b"Authorization: Bearer k" in lines
    assert b"Content-Length: 8" in lines
    assert body == b'{"a": 1}'
    assert t.address() == ("127.0.0.1", 8123)


async def _serve(handler: Handler) -> tuple[asyncio.Server, int, list[int]]:
    """A loopback HTTP/1.1 server answering each request with ``handler(n)``."""
    count = [0]
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                count[0] += 1
                response = await handler(count[0])
                if response is None:
                    break
                writer.write(response)
                await writer.drain()
                if b"Connection: close" in response:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, connections


def _target(port: int) -> Target:
    return Target("test", f"http://127.0.0.1:{port}/v1/scores", b"{}", {})


def test_open_loop_counts_every_request_and_reads_server_timing() -> None:
    async def ok(_: int) -> bytes:
        return OK

    async def run() -> None:
        server, port, _ = await _serve(ok)
        async with server:
            res = await open_loop(_target(port), 400, 0.25, cap=8)
        assert (res.sent, res.ok, res.errors) == (100, 100, {})
        assert len(res.latency_ms) == len(res.lateness_ms) == 100
        assert res.server_ms == [0.25] * 100
        assert all(lat > 0 for lat in res.latency_ms)
        assert min(res.lateness_ms) >= 0  # nothing sent before it was due
        assert res.cap_waits == 0

    asyncio.run(run())


def test_broken_connection_is_one_error_and_replaced() -> None:
    async def drop_every_tenth(n: int) -> bytes | None:
        return None if n % 10 == 0 else OK

    async def run() -> None:
        server, port, _ = await _serve(drop_every_tenth)
        async with server:
            # the warm-up sends 4 x 5 requests, then the 100 counted: 30, 40, ..., 120 drop
            res = await open_loop(_target(port), 400, 0.25, cap=8)
        assert res.errors == {"connection lost": 10}
        assert res.ok == 90

    asyncio.run(run())


def test_connection_close_is_honoured() -> None:
    closing = OK.replace(b"content-length", b"Connection: close\r\ncontent-length")

    async def close(_: int) -> bytes:
        return closing

    async def run() -> None:
        server, port, connections = await _serve(close)
        async with server:
            res = await open_loop(_target(port), 200, 0.1, cap=8)
        assert (res.ok, res.errors) == (20, {})
        assert len(connections) == 20 + 20  # one per request, warm-up included

    asyncio.run(run())


def test_requests_waiting_at_the_cap_count_from_their_due_time() -> None:
    async def slow(_: int) -> bytes:
        await asyncio.sleep(0.02)
        return OK

    async def run() -> None:
        server, port, connections = await _serve(slow)
        async with server:
            # two connections of 20 ms answers carry 100/s; 400/s must queue
            res = await open_loop(_target(port), 400, 0.1, cap=2)
        assert (res.ok, res.errors) == (40, {})
        assert res.peak_connections == 2
        assert len(connections) == 2
        assert res.cap_waits > 0
        # the last request is answered about 40 x 10 ms after the first is due, though it
        # was due 97.5 ms after the first: its latency includes the ~300 ms it queued
        assert max(res.latency_ms) > 250

    asyncio.run(run())


def test_closed_loop_keeps_each_connection_busy() -> None:
    async def ok(_: int) -> bytes:
        return OK

    async def run() -> None:
        server, port, connections = await _serve(ok)
        async with server:
            res = await closed_loop(_target(port), 3, 0.2)
        assert res.errors == {}
        assert res.ok == res.sent > 10
        assert len(connections) == 3

    asyncio.run(run())
