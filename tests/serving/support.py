"""Helpers shared by the serving tests: constants, test settings, request bodies."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import uvicorn
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.registry import ModelRef, load_served_model
from customer_lifecycle.serving.settings import Settings

NAME = "lifecycle-serving"
AS_OF = "2024-12-31"
KEYS = ("key-alpha", "key-beta")
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


@dataclass(frozen=True)
class Trained:
    """The session's registry and models."""

    root: Path
    tracking_uri: str
    name: str
    v1_dir: Path  # bundle directories of versions 1 and 2 (fast to load)
    v2_dir: Path
    events: pd.DataFrame  # the simulated log, canonical frame
    as_of: str


def settings(model_uri: str | Path | None, **overrides: Any) -> Settings:
    """Test settings: two API keys, no polling, and ``overrides``."""
    values: dict[str, Any] = {
        "model_uri": None if model_uri is None else str(model_uri),
        "api_keys": ",".join(KEYS),
        "reload_interval_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)


def customer_payload(events: pd.DataFrame, customer_id: str, *, limit: int | None = None) -> dict:
    """The JSON body entry for one customer of the simulated log."""
    rows = events[events["customer_id"] == customer_id]
    if limit is not None:
        rows = rows.tail(limit)
    out = []
    for ts, kind, amount, channel in zip(
        rows["timestamp"], rows["event_type"], rows["amount"], rows["channel"], strict=True
    ):
        event: dict[str, Any] = {"timestamp": ts.isoformat(), "event_type": str(kind)}
        if amount == amount:  # not NaN
            event["amount"] = float(amount)
        if isinstance(channel, str):
            event["channel"] = channel
        out.append(event)
    return {"customer_id": customer_id, "events": out}


def busy_customers(events: pd.DataFrame, before: str, n: int) -> list[str]:
    """``n`` customers with the most events before ``before``, for varied predictions."""
    early = events[events["timestamp"] < pd.Timestamp(before, tz="UTC")]
    counts = early["customer_id"].astype(str).value_counts()
    step = max(1, len(counts) // n)
    return [str(c) for c in counts.index[::step][:n]]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free loopback port, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass(frozen=True)
class ServerProcess:
    """A server in a subprocess (:func:`server_process`): its address and process id."""

    url: str
    port: int
    pid: int

    def memory_kib(self, field: str) -> int:
        """``VmRSS``, ``VmHWM`` (peak resident set) ... of the server, from /proc, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
        raise KeyError(field)


@contextmanager
def server_process(model_uri: str | Path, **overrides: Any) -> Iterator[ServerProcess]:
    """Run the app under uvicorn in a subprocess, settings from ``LIFECYCLE_*`` variables.

    The test settings of :func:`settings` plus ``overrides``. Waits until ``/readyz`` is
    200; the process is stopped on exit.
    """
    env = {
        **os.environ,
        "LIFECYCLE_MODEL_URI": str(model_uri),
        "LIFECYCLE_API_KEYS": ",".join(KEYS),
        "LIFECYCLE_RELOAD_INTERVAL_SECONDS": "0",
        "LIFECYCLE_LOG_LEVEL": "warning",
    }
    env.update({f"LIFECYCLE_{k.upper()}": str(v) for k, v in overrides.items()})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import uvicorn\n"
        "from customer_lifecycle.serving.app import create_app\n"
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_config=None, "
        "access_log=False, lifespan='on')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the test server exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not become ready")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield ServerProcess(url, port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def raw_request(
    port: int, path: str, body: bytes, *, headers: dict[str, str] | None = None
) -> socket.socket:
    """Open a connection and send a POST's head (with ``Content-Length: len(body)``,
    unless ``headers`` give one) and ``body``; the socket is returned unread."""
    fields = {
        "Host": "127.0.0.1",
        "Authorization": f"Bearer {KEYS[0]}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read an answer to its end (the server closes the connection): status, headers, body.

    A connection reset raises ``ConnectionResetError``, as it would for any client.
    """
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


@dataclasses.dataclass(frozen=True)
class BlockingModel(ServedModel):
    """A model whose scoring waits for a gate: keeps a request in flight on purpose."""

    gate: threading.Event = dataclasses.field(default_factory=threading.Event)
    entered: threading.Event = dataclasses.field(default_factory=threading.Event)

    def score_events(self, customers: Any, as_of: datetime) -> Any:
        self.entered.set()
        assert self.gate.wait(30)
        return super().score_events(customers, as_of)


def blocking_loader(
    holder: dict[str, BlockingModel],
) -> Callable[[str, ModelRef], ServedModel]:
    """A real model loader whose model is a :class:`BlockingModel`, kept in ``holder``."""
    playbook = load_playbook()

    def loader(uri: str, ref: ModelRef) -> ServedModel:
        real = load_served_model(uri, ref, playbook=playbook, reasons=3)
        fields = {f.name: getattr(real, f.name) for f in dataclasses.fields(real)}
        holder["model"] = BlockingModel(**fields)
        return holder["model"]

    return loader
