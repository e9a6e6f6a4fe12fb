"""HTTP API latency and throughput against ``mlflow models serve`` (docs/scale.md, API).

Run ``python -m benchmarks.serving`` (about four minutes with the defaults).
Without ``--model`` a small demo model is simulated, trained and registered in a temporary
MLflow store first; with ``--model models:/NAME@champion`` the store of
``MLFLOW_TRACKING_URI`` (or ``./mlflow.db``) is used.

Both servers run as subprocesses on loopback ports: ours (``lifecycle serve``) and
``mlflow models serve -m <uri> --env-manager local`` on the same registered model. The
payload is one customer with 50 events (ours builds the features) or that customer's
precomputed features (ours at ``/v1/scores/features`` and MLflow's ``/invocations``,
which takes features only).

Load is open-loop: request ``i`` is due at ``start + i / rate`` whatever happened to
earlier requests, and its latency counts from that due time, also while it waits for a
free connection, so a slow server cannot hide latency by slowing the client down (no
coordinated omission). A closed-loop phase then sends back-to-back requests from
``--concurrency`` connections to measure the most each server sustains, and a sustained
phase holds ``--sustained-rate`` on our ``/v1/scores`` for ``--sustained-duration``
seconds (the target: 1,000 requests per second for 60 seconds). Ours reports its own
time per request in the ``Server-Timing`` header (arrival of the request to its response
headers): that is the "inside the server" latency of the targets.

The client shares the machine with the servers, so it is kept lean: pre-encoded
requests written on persistent HTTP/1.1 connections by an ``asyncio.Protocol`` (on
uvloop when installed), reading only the status line, ``Content-Length``,
``Connection`` and ``Server-Timing``. Each row is followed by what the client itself
did: its send rate and lateness against the due times, its CPU time and the server's,
and the machine load; when the client fell behind the row says so, since its figures
then measure the client. Errors are counted by kind: ``HTTP <status>``, ``connection
lost`` (with a request in flight), ``connect <error>``, ``bad response``, and
``timeout`` for requests unanswered 30 s after the last send (in overload, mostly
requests still queued for a connection at the pool's cap).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd

KEY = "benchmark-key"
AS_OF = "2024-12-31"
LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"

DRAIN_TIMEOUT_S = 30.0  # a request unanswered this long after the last send is a timeout
# Both loops wake on millisecond timers (uvloop rounds a delay to whole milliseconds and
# runs one under half a millisecond at once): a shorter sleep would spin the loop, so
# sends can be up to about a millisecond late. That lateness is measured and counted.
MIN_SLEEP_S = 0.0006
# uvicorn closes a connection idle for 5 s; reusing one about to close would fail a
# request the server never saw, so the pool drops its own idle connections earlier.
IDLE_LIMIT_S = 4.0
# The client kept up if it sent at 99% of the asked rate and 99% of sends were at most
# this late (the millisecond timers alone make them up to about 1 ms late).
LATE_P99_LIMIT_MS = 2.0
CLIENT_BOUND_SHARE = 0.8  # of one core: above it, a closed loop measures the client


@dataclass
class Target:
    """One server endpoint and the request body it is sent."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]

    def address(self) -> tuple[str, int]:
        """Host and port to connect to."""
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def request(self) -> bytes:
        """The whole HTTP/1.1 request, encoded once and written as is for every send."""
        parts = urlsplit(self.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
            f"Content-Length: {len(self.body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode("latin-1") + self.body


@dataclass
class Result:
    """What one phase against one target measured."""

    target: str
    mode: str
    phase: str  # "open", "closed" or "sustained"
    asked_rate: float = math.nan  # open loop only
    cap: int = 0
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)
    send_span_s: float = 0.0  # first due time to the last send
    elapsed_s: float = 0.0  # first due time to the last response
    peak_connections: int = 0
    cap_waits: int = 0  # requests that found every connection busy and the pool at its cap
    client_cpu_s: float = math.nan
    server_cpu_s: float = math.nan
    load1: float = math.nan

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` failed requests of one kind."""
        self.errors[kind] = self.errors.get(kind, 0) + n

    @property
    def throughput(self) -> float:
        """Successful responses per second."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def send_rate(self) -> float:
        """Requests sent per second: the asked rate when the client kept up."""
        if not self.sent or self.send_span_s <= 0:
            return math.nan
        if math.isnan(self.asked_rate):
            return self.sent / self.send_span_s
        # n sends span (n - 1) intervals; one more interval makes n / span == rate
        return self.sent / (self.send_span_s + 1 / self.asked_rate)

    def client_behind(self) -> str | None:
        """Why the figures are partly the client's rather than the server's, if they are."""
        wall = self.elapsed_s if self.elapsed_s > 0 else math.nan
        share = self.client_cpu_s / wall
        busy = f"the client used {share:.0%} of a core"
        if self.phase == "closed":
            return busy if share > CLIENT_BOUND_SHARE else None
        reasons = []
        if self.send_rate < 0.99 * self.asked_rate:
            reasons.append(f"sent {self.send_rate:.0f}/s of {self.asked_rate:g}/s")
        late = _percentiles(self.lateness_ms, [99])[0]
        if late > LATE_P99_LIMIT_MS:
            reasons.append(f"p99 of sends {late:.1f} ms late")
        if not reasons:
            return None
        if share <= CLIENT_BOUND_SHARE:  # not the client's own work: it was not scheduled
            busy += f", so it waited for a CPU (load {self.load1:.1f} on {os.cpu_count()} CPUs)"
        return "; ".join([*reasons, busy])

    def row(self) -> str:
        p = _percentiles(self.latency_ms, [50, 95, 99])
        s = _percentiles(self.server_ms, [50, 95, 99])
        errors = sum(self.errors.values())
        detail = ",".join(f"{k}:{v}" for k, v in sorted(self.errors.items()))
        return (
            f"{self.target:<22} {self.mode:<15} {self.sent:>6} {errors:>6} "
            f"{p[0]:>8.2f} {p[1]:>8.2f} {p[2]:>8.2f} {self.throughput:>9.0f} "
            f"{s[0]:>7.2f} {s[1]:>7.2f} {s[2]:>7.2f}  {detail}"
        )

    def detail(self) -> str:
        """The client's own side of the row: did it keep up, and who used the CPU."""
        wall = self.elapsed_s if self.elapsed_s > 0 else math.nan
        parts = []
        if self.phase != "closed":
            late = _percentiles(self.lateness_ms, [50, 99])
            worst = max(self.lateness_ms, default=math.nan)
            parts.append(
                f"sent {self.send_rate:.0f}/s of {self.asked_rate:g}/s, sends late "
                f"p50 {late[0]:.2f} p99 {late[1]:.2f} max {worst:.2f} ms"
            )
        parts.append(
            f"CPU client {self.client_cpu_s:.1f} s ({self.client_cpu_s / wall:.0%} of a core), "
            f"server {self.server_cpu_s:.1f} s ({self.server_cpu_s / wall:.0%})"
        )
        reached = f"reached by {self.cap_waits} requests" if self.cap_waits else "not reached"
        parts.append(f"connections peak {self.peak_connections}, cap {self.cap} {reached}")
        parts.append(f"load {self.load1:.2f}")
        behind = self.client_behind()
        if not behind:
            verdict = "client kept up"
        elif self.phase == "closed":
            verdict = f"CLIENT-BOUND: {behind}; the throughput above is partly the client's"
        else:
            verdict = f"CLIENT FELL BEHIND: {behind}; the latencies above include its delay"
            late, lat = _percentiles(self.lateness_ms, [99])[0], self.latency_p99()
            if late < 0.1 * lat:
                verdict += f", small beside their p99 of {lat:.1f} ms"
        return "    " + "; ".join(parts) + f"\n    -> {verdict}"

    def latency_p99(self) -> float:
        return float(_percentiles(self.latency_ms, [99])[0])


HEADER = (
    f"{'target':<22} {'mode':<15} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'ok/s':>9} {'srv p50':>7} {'srv p95':>7} {'srv p99':>7}"
)


def _percentiles(values: Sequence[float], qs: list[float]) -> np.ndarray:
    if not values:
        return np.full(len(qs), math.nan)
    return np.percentile(np.asarray(values), qs)


# -- HTTP/1.1 client ------------------------------------------------------------------------


class Head(NamedTuple):
    """What the client reads of a response head."""

    status: int
    length: int  # body bytes; -1 for a chunked body
    keep_alive: bool
    server_ms: float  # the first ``dur=`` of ``Server-Timing``; NaN without one


def parse_head(head: bytes) -> Head:
    """Parse a response head: status line and header lines, without the blank line.

    Raises
    ------
    ValueError
        If it is not HTTP/1.x or its body has neither a length nor chunked encoding
        (a body ended by closing the connection is not supported).
    """
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    keep_alive = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    server_ms = math.nan
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"server-timing" and math.isnan(server_ms):
            _, found, tail = value.partition(b"dur=")
            if found:
                server_ms = float(tail.split(b",")[0].split(b";")[0])
    if chunked:
        length = -1
    elif length is None:
        if status not in (204, 304) and status >= 200:
            raise ValueError(f"HTTP {status} response without Content-Length or chunked body")
        length = 0
    return Head(status, length, keep_alive, server_ms)


def chunked_end(buf: bytes | bytearray, start: int) -> int:
    """Offset just past the chunked body that begins at ``start`` in ``buf``; -1 if partial."""
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:  # then optional trailer lines and a blank line
            end = buf.find(b"\r\n\r\n", eol)
            return -1 if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return -1


class _Connection(asyncio.Protocol):
    """One keep-alive connection of a :class:`_Pool`, carrying one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: Head | None = None
        self.body_at = 0
        self.busy = False
        self.due = 0.0
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, due: float) -> None:
        self.busy = True
        self.due = due
        assert self.transport is not None
        self.transport.write(self.pool.request)

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing was asked: the connection is out of step, drop it
            self.close()
            return
        buf = self.buf
        buf += data
        if self.head is None:
            blank = buf.find(b"\r\n\r\n")
            if blank < 0:
                return
            try:
                self.head = parse_head(bytes(buf[:blank]))
            except ValueError:
                self._fail("bad response")
                return
            self.body_at = blank + 4
        head = self.head
        if head.length >= 0:
            end = self.body_at + head.length
            if len(buf) < end:
                return
        else:
            try:
                end = chunked_end(buf, self.body_at)
            except ValueError:
                self._fail("bad response")
                return
            if end < 0:
                return
        done = time.perf_counter()
        if len(buf) > end:  # bytes after the response to the one request in flight
            self._fail("bad response")
            return
        buf.clear()
        self.head = None
        self.busy = False
        self.idle_since = done
        self.pool.answered(self, head, done)

    def _fail(self, kind: str) -> None:
        self.busy = False
        self.buf.clear()
        self.head = None
        self.close()
        self.pool.failed(kind)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Pool:
    """Keep-alive connections to one target, opened on demand up to ``cap``.

    :meth:`submit` hands a request to the most recently used idle connection; with none
    idle it queues (first in, first out) and a connection is opened if the pool is below
    its cap. Whatever a request waits for, its latency counts from its due time. A
    broken connection fails the request it carried and is replaced when needed.
    """

    def __init__(self, target: Target, cap: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = target.address()
        self.request = target.request()
        self.cap = cap
        self.res = Result(target.name, "warm-up", "warm-up", cap=cap)
        self.conns: set[_Connection] = set()
        self.idle: list[_Connection] = []
        self.queue: deque[float] = deque()
        self.opening = 0
        self.outstanding = 0
        self.on_done: Callable[[], None] | None = None
        self.closing = False
        self._drained: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def use(self, res: Result) -> Result:
        """Record into ``res`` from now on (after a warm-up, say)."""
        res.cap = self.cap
        res.peak_connections = len(self.conns)
        self.res = res
        return res

    def submit(self, due: float) -> None:
        """Send one request due at ``due`` (a ``time.perf_counter`` value)."""
        self.outstanding += 1
        self.res.sent += 1
        conn = self._take_idle()
        if conn is not None:
            conn.send(due)
            return
        self.queue.append(due)
        if len(self.conns) + self.opening >= self.cap:
            self.res.cap_waits += 1
        self._pump()

    def _take_idle(self) -> _Connection | None:
        now = time.perf_counter()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < IDLE_LIMIT_S:
                return conn
            conn.close()
        return None

    def _pump(self) -> None:
        while self.queue:
            conn = self._take_idle()
            if conn is None:
                break
            conn.send(self.queue.popleft())
        while len(self.queue) > self.opening and len(self.conns) + self.opening < self.cap:
            self.opening += 1
            task = self.loop.create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError as exc:
            self.opening -= 1
            if self.queue:  # the request this connection was opened for fails
                self.queue.popleft()
                self.failed(f"connect {type(exc).__name__}")
            return
        self.opening -= 1
        if self.closing:
            conn.close()
            return
        self.conns.add(conn)
        self.res.peak_connections = max(self.res.peak_connections, len(self.conns))
        conn.idle_since = time.perf_counter()
        self.idle.append(conn)
        self._pump()

    def answered(self, conn: _Connection, head: Head, done: float) -> None:
        res = self.res
        if head.status == 200:
            res.ok += 1
            res.latency_ms.append((done - conn.due) * 1000.0)
            if not math.isnan(head.server_ms):
                res.server_ms.append(head.server_ms)
        else:
            res.count(f"HTTP {head.status}")
        if head.keep_alive:
            self.idle.append(conn)
        else:
            conn.close()  # connection_lost will replace it if needed
        self._pump()
        self._completed()

    def failed(self, kind: str) -> None:
        self.res.count(kind)
        self._completed()

    def lost(self, conn: _Connection) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.failed("connection lost")
        if not self.closing:
            self._pump()

    def _completed(self) -> None:
        self.outstanding -= 1
        if self.on_done is not None:
            self.on_done()
        if self.outstanding == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self, timeout: float) -> None:
        """Wait for every request sent; count those unanswered after ``timeout`` s."""
        if not self.outstanding:
            return
        self._drained = self.loop.create_future()
        try:
            await asyncio.wait_for(self._drained, timeout)
        except TimeoutError:
            self.res.count("timeout", self.outstanding)
            self.outstanding = 0
            self.queue.clear()
            for conn in list(self.conns):
                if conn.busy:
                    conn.busy = False
                    conn.close()
        finally:
            self._drained = None

    async def warm_up(self, connections: int, rounds: int) -> None:
        """Open ``connections`` and send ``rounds`` requests on each, not counted."""
        for _ in range(rounds):
            now = time.perf_counter()
            for _ in range(connections):
                self.submit(now)
            await self.drain(DRAIN_TIMEOUT_S)

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.busy = False
            conn.close()
        await asyncio.sleep(0)  # let the transports report connection_lost


# -- load generation ---------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    """CPU time of process ``pid`` and its descendants, from ``/proc``; NaN elsewhere."""
    if pid is None or not os.path.isdir("/proc"):
        return math.nan
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        # after the command name: state, ppid, ..., utime, stime, cutime, cstime (3, 4, 14-17)
        cpu = sum(int(f) for f in fields[11:15]) / tick
        stats[int(entry)] = (int(fields[1]), cpu)
    tree, total = {pid}, 0.0
    grew = True
    while grew:
        grew = False
        for p, (parent, _) in stats.items():
            if parent in tree and p not in tree:
                tree.add(p)
                grew = True
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


@contextlib.contextmanager
def _measured(res: Result, server_pid: int | None) -> Iterator[None]:
    """Record client and server CPU time over a phase, without garbage collection.

    A full collection over the many objects the client imported (pandas, MLflow) takes
    tens of milliseconds: inside a phase it would show as the client's lateness.
    """
    server0, client0 = _cpu_seconds(server_pid), time.process_time()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        res.client_cpu_s = time.process_time() - client0
        res.server_cpu_s = _cpu_seconds(server_pid) - server0
        res.load1 = os.getloadavg()[0]


async def open_loop(
    t: Target,
    rate: float,
    duration: float,
    *,
    cap: int,
    server_pid: int | None = None,
    phase: str = "open",
) -> Result:
    """``rate * duration`` requests, each sent at its due time, latency from that time."""
    pool = _Pool(t, cap)
    await pool.warm_up(connections=min(cap, 4), rounds=5)
    res = pool.use(Result(t.name, f"{phase} {rate:g}/s", phase, asked_rate=rate))
    total = max(1, int(rate * duration))
    with _measured(res, server_pid):
        start = time.perf_counter() + 0.01
        i = 0
        while i < total:
            due = start + i / rate
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(max(due - now, MIN_SLEEP_S))
                continue
            res.lateness_ms.append((now - due) * 1000.0)
            pool.submit(due)
            i += 1
        res.send_span_s = time.perf_counter() - start
        await pool.drain(DRAIN_TIMEOUT_S)
        res.elapsed_s = time.perf_counter() - start
    await pool.close()
    return res


async def closed_loop(
    t: Target, concurrency: int, duration: float, *, server_pid: int | None = None
) -> Result:
    """Back-to-back requests from ``concurrency`` connections: the sustained maximum."""
    pool = _Pool(t, cap=concurrency)
    await pool.warm_up(connections=concurrency, rounds=5)
    res = pool.use(Result(t.name, f"closed x{concurrency}", "closed"))
    with _measured(res, server_pid):
        start = time.perf_counter()
        stop = start + duration

        def again() -> None:
            now = time.perf_counter()
            if now < stop:
                pool.submit(now)

        pool.on_done = again
        for _ in range(concurrency):
            pool.submit(time.perf_counter())
        await asyncio.sleep(duration)
        res.send_span_s = time.perf_counter() - start
        await pool.drain(DRAIN_TIMEOUT_S)
        res.elapsed_s = time.perf_counter() - start
    await pool.close()
    return res


def _run(phase: Coroutine[Any, Any, Result]) -> Result:
    """Run one phase on its own event loop, uvloop's when installed."""
    if LOOP == "uvloop":
        import uvloop

        return cast(Result, uvloop.run(phase))
    return asyncio.run(phase)


# -- servers ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(
    cmd: list[str], ready_url: str, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd``, wait until ``ready_url`` answers 200, stop it with SIGTERM at the end."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} never became ready; see {log}")
                time.sleep(0.25)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- model and payload ----------------------------------------------------------------------


def demo_model(workdir: Path) -> str:
    """Simulate a shop, train a small model into a store under ``workdir``; its URI."""
    from customer_lifecycle.simulator import write_dataset
    from customer_lifecycle.training.train import TrainConfig, train

    data = workdir / "data"
    write_dataset(data, customers=3000, seed=3, as_of=[AS_OF])
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        train(
            data / "events.parquet",
            labels_path=data / "labels.csv",
            config=TrainConfig(max_rounds=200),
            register="bench",
            promote_if_better=True,
            say=lambda _: None,
        )
    finally:
        os.chdir(cwd)
    return "models:/bench@champion"


def payloads(
    model: str, events_per_customer: int
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """One customer with ``events_per_customer`` events (JSON body) and their features."""
    from customer_lifecycle.scoring.pyfunc import load_bundle
    from customer_lifecycle.simulator import write_dataset

    bundle = load_bundle(model)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), customers=300, seed=11, as_of=[AS_OF])
        events = pd.read_parquet(Path(tmp) / "events.parquet")
    events = events[events["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")]
    counts = events["customer_id"].value_counts()
    cid = str(counts.index[0])
    rows = events[events["customer_id"] == cid].tail(events_per_customer)
    if len(rows) < events_per_customer:  # repeat the history, shifted back, to reach the size
        reps = math.ceil(events_per_customer / len(rows))
        rows = pd.concat(
            [
                rows.assign(timestamp=rows["timestamp"] - pd.Timedelta(days=400 * k))
                for k in range(reps)
            ]
        ).tail(events_per_customer)
    body = {
        "as_of": f"{AS_OF}T00:00:00Z",
        "customers": [
            {
                "customer_id": cid,
                "events": [
                    {
                        "timestamp": ts.isoformat(),
                        "event_type": str(kind),
                        **({"amount": float(amount)} if amount == amount else {}),
                    }
                    for ts, kind, amount in zip(
                        rows["timestamp"], rows["event_type"], rows["amount"], strict=True
                    )
                ],
            }
        ],
    }
    feats = bundle.build_features(rows, as_of=AS_OF).iloc[0]
    return body, {str(k): (None if math.isnan(v) else float(v)) for k, v in feats.items()}


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", help="Model URI; default: train a small demo model first.")
    ap.add_argument("--rate", type=float, default=50.0, help="Open-loop requests per second.")
    ap.add_argument("--duration", type=float, default=15.0, help="Seconds of open-loop load.")
    ap.add_argument("--concurrency", type=int, default=8, help="Closed-loop connections.")
    ap.add_argument(
        "--closed-duration", type=float, default=5.0, help="Seconds of closed-loop load (0: skip)."
    )
    ap.add_argument(
        "--sustained-rate",
        type=float,
        default=1000.0,
        help="Requests per second of the sustained phase on our /v1/scores.",
    )
    ap.add_argument(
        "--sustained-duration",
        type=float,
        default=60.0,
        help="Seconds of the sustained phase (0: skip).",
    )
    ap.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="Cap of the open-loop connection pool; requests wait for a free one above it.",
    )
    ap.add_argument("--events", type=int, default=50, help="Events of the scored customer.")
    ap.add_argument("--skip-mlflow", action="store_true", help="Only benchmark our server.")
    ap.add_argument(
        "--workers", type=int, default=1, help="Worker processes of our server (serve --workers)."
    )
    args = ap.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, load {_load()} at start; client loop: {LOOP}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model = args.model or demo_model(work)
        body, features = payloads(model, args.events)
        env = {
            **os.environ,
            # mlflow models serve starts `uvicorn` by name: the venv's bin must be on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LIFECYCLE_API_KEYS": KEY,
            "LIFECYCLE_RELOAD_INTERVAL_SECONDS": "0",
            "LIFECYCLE_MAX_IN_FLIGHT": "256",
            "LIFECYCLE_LOG_LEVEL": "warning",
        }
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        ours_port = _free_port()
        ours = f"http://127.0.0.1:{ours_port}"
        features_body = {"customers": [{"customer_id": "c", "features": features}]}
        scores = Target("ours /v1/scores", f"{ours}/v1/scores", json.dumps(body).encode(), auth)
        targets = [
            scores,
            Target(
                "ours /v1/scores/feat.",
                f"{ours}/v1/scores/features",
                json.dumps(features_body).encode(),
                auth,
            ),
        ]
        print(f"model {model}; one customer, {args.events} events; load {_load()} before the runs")
        print(HEADER, flush=True)
        serve = [sys.executable, "-c", "from customer_lifecycle.cli import app; app()"]
        cmd = [*serve, "serve", "--model", model, "--port", str(ours_port)]
        cmd += ["--workers", str(args.workers)]
        with running(cmd, f"{ours}/readyz", env, work / "ours.log") as proc:
            for t in targets:
                results += _run_target(t, args, proc.pid)
                if t is scores and args.sustained_duration > 0:
                    phase = open_loop(
                        t,
                        args.sustained_rate,
                        args.sustained_duration,
                        cap=args.max_connections,
                        server_pid=proc.pid,
                        phase="sustained",
                    )
                    results.append(_report(_run(phase)))
        if not args.skip_mlflow:
            mlflow_port = _free_port()
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
            split = {  # the pyfunc signature has customer_id first
                "dataframe_split": {
                    "columns": ["customer_id", *features],
                    "data": [["c", *features.values()]],
                }
            }
            target = Target(
                "mlflow /invocations",
                f"{mlflow_url}/invocations",
                json.dumps(split).encode(),
                {"Content-Type": "application/json"},
            )
            cmd = [
                mlflow_cli, "models", "serve", "-m", model, "--env-manager", "local",
                "--host", "127.0.0.1", "-p", str(mlflow_port),
            ]  # fmt: skip
            with running(cmd, f"{mlflow_url}/ping", env, work / "mlflow.log") as proc:
                results += _run_target(target, args, proc.pid)
    print(f"load {_load()} at end")
    summary = targets_met(results, args)
    if summary:
        print("\ndocs/scale.md API targets (on this run):")
        print("\n".join(f"  {line}" for line in summary))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _report(res: Result) -> Result:
    print(res.row(), res.detail(), sep="\n", flush=True)
    return res


def _run_target(t: Target, args: argparse.Namespace, server_pid: int) -> list[Result]:
    phase = open_loop(t, args.rate, args.duration, cap=args.max_connections, server_pid=server_pid)
    out = [_report(_run(phase))]
    if args.closed_duration > 0:
        closed = closed_loop(t, args.concurrency, args.closed_duration, server_pid=server_pid)
        out.append(_report(_run(closed)))
    return out


def targets_met(results: list[Result], args: argparse.Namespace) -> list[str]:
    """One line per target these results speak to, with the measured figure and who limited it."""

    def find(target: str, phase: str) -> Result | None:
        return next((r for r in results if r.target == target and r.phase == phase), None)

    lines = []
    for phase in ("open", "sustained"):
        # the server's own time: the client's lateness does not enter it, the machine's load does
        res = find("ours /v1/scores", phase)
        if res is not None and res.server_ms:
            p50, p99 = _percentiles(res.server_ms, [50, 99])
            met = "met" if p50 <= 2 and p99 <= 10 else "MISSED"
            lines.append(
                f"inside the server, {args.events} events, {res.mode}: p50 {p50:.2f} ms (<= 2), "
                f"p99 {p99:.2f} ms (<= 10): {met} (load {res.load1:.1f} on {os.cpu_count()} CPUs)"
            )
    sustained = find("ours /v1/scores", "sustained")
    if sustained is not None:
        p99 = sustained.latency_p99()
        late = _percentiles(sustained.lateness_ms, [99])[0]
        errors = sum(sustained.errors.values())
        asked = f"{args.sustained_rate:g}/s for {args.sustained_duration:g} s"
        if args.sustained_rate < 1000 or args.sustained_duration < 60:
            asked += ", short of the target's 1000/s for 60 s"
        if p99 <= 20 and errors == 0:
            met = "met" if args.sustained_rate >= 1000 else "met at this rate"
        elif sustained.client_behind() and (
            p99 - late <= 20 or sustained.send_rate < 0.99 * args.sustained_rate
        ):
            met = "MISSED, but the client fell behind: rerun on a quieter machine"
        else:
            met = f"MISSED by the server (p99 of client sends {late:.1f} ms late)"
        lines.append(f"sustained {asked}: p99 {p99:.2f} ms (<= 20), errors {errors} (0): {met}")
    theirs = find("mlflow /invocations", "closed")
    if theirs is not None and theirs.throughput > 0:
        for name in ("ours /v1/scores/feat.", "ours /v1/scores"):
            mine = find(name, "closed")
            if mine is not None:
                ratio = mine.throughput / theirs.throughput
                met = "met" if ratio >= 5 else "MISSED"
                if mine.client_behind():
                    met += " (client-bound: ours may do more)"
                lines.append(
                    f"throughput {name} {mine.throughput:.0f}/s vs mlflow "
                    f"{theirs.throughput:.0f}/s: {ratio:.1f}x (>= 5): {met}"
                )
    return lines


if __name__ == "__main__":
    main()
