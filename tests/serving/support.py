"""Helpers shared by the serving tests: constants, test settings, request bodies."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import uvicorn
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
