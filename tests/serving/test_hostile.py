"""What a hostile or careless HTTP client can send, against real servers and sockets.

Bodies that trickle or stop, overload with ``Connection: close``, many large bodies at
once (memory), non-finite numbers, amounts beyond the loader's bound, long values echoed
back, and time texts the file loader would not read.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd
import pytest
from customer_lifecycle.features.contract import TIMESTAMP_PATTERN
from customer_lifecycle.features.validation import MAX_AMOUNT, validate_events
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.serving.schemas import Event
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.serving.support import (
    AUTH,
    BlockingModel,
    Trained,
    blocking_loader,
    live_server,
    raw_request,
    read_response,
    server_process,
    settings,
)

pytestmark = pytest.mark.slow

SCORES = "/v1/scores"


def one_event_body(**event: Any) -> dict[str, Any]:
    base = {"timestamp": "2024-06-01T10:00:00Z", "event_type": "page_view", **event}
    return {"as_of": "2024-07-01T00:00:00Z", "customers": [{"customer_id": "c1", "events": [base]}]}


GOOD = json.dumps(one_event_body()).encode()


# -- bodies under a deadline --------------------------------------------------------------------


def test_trickling_bodies_hold_no_scoring_slot_and_get_408(trained: Trained) -> None:
    """40 clients declare a length and send a few bytes: the others are still served."""
    with server_process(trained.v1_dir, max_in_flight=4, body_timeout_seconds=4) as server:
        started = time.monotonic()
        stalled = [
            raw_request(server.port, SCORES, GOOD[:10], headers={"Content-Length": str(len(GOOD))})
            for _ in range(40)
        ]
        time.sleep(0.5)  # the server has taken them all in
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            statuses = [client.post(SCORES, content=GOOD).status_code for _ in range(10)]
            ready = client.get("/readyz").status_code
        assert statuses == [200] * 10
        assert ready == 200
        for sock in stalled:  # each is answered 408 once the deadline passes, and closed
            status, headers, body = read_response(sock)
            assert status == 408
            assert headers["connection"] == "close"
            assert "body_timeout_seconds" in json.loads(body)["detail"]
            sock.close()
        assert 4 <= time.monotonic() - started < 30


# -- overload with Connection: close ------------------------------------------------------------


def test_overload_with_connection_close_is_503_with_retry_after_not_a_reset(
    trained: Trained,
) -> None:
    holder: dict[str, BlockingModel] = {}
    loader = blocking_loader(holder)

    app = create_app(
        settings(trained.v1_dir, max_in_flight=1, retry_after_seconds=3, inline_event_limit=0),
        loader=loader,
    )
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        model = holder["model"]
        first = raw_request(port, SCORES, GOOD, headers={"Connection": "close"})
        assert model.entered.wait(30)
        # Bodies of 1 MB: the answer comes before the client has read anything, so any
        # body left unread in the server's socket would turn it into a reset.
        padded = GOOD[:-1] + b" " * 1_000_000 + b"}"
        for _ in range(10):
            sock = raw_request(port, SCORES, padded, headers={"Connection": "close"})
            status, headers, body = read_response(sock)
            sock.close()
            assert status == 503
            assert headers["retry-after"] == "3"
            assert "in progress" in json.loads(body)["detail"]
        model.gate.set()
        assert read_response(first)[0] == 200
        first.close()


def test_bodies_over_the_byte_budget_are_503_after_being_read(trained: Trained) -> None:
    """A body that would take the bytes held over the budget: 503, not a reset."""
    limit = 64 * 1024
    with server_process(
        trained.v1_dir, max_body_bytes=limit, max_body_bytes_in_flight=limit
    ) as server:
        padded = GOOD[:-1] + b" " * (limit - len(GOOD) - 1) + b"}"
        # One client has sent 60 KiB of its 64 KiB and waits: it holds 60 KiB.
        holding = raw_request(
            server.port, SCORES, padded[: 60 * 1024], headers={"Content-Length": str(len(padded))}
        )
        time.sleep(0.5)
        small = GOOD[:-1] + b" " * 20_000 + b"}"
        for _ in range(5):
            sock = raw_request(server.port, SCORES, small, headers={"Connection": "close"})
            status, headers, body = read_response(sock)
            sock.close()
            assert status == 503
            assert headers["retry-after"] == "1"
            assert "max_body_bytes_in_flight" in json.loads(body)["detail"]
        holding.sendall(padded[60 * 1024 :])
        status, _, _ = read_response_keepalive(holding)
        assert status == 200


def read_response_keepalive(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one answer with a ``Content-Length`` from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    sock.close()
    return int(lines[0].split()[1]), headers, body


# -- memory -------------------------------------------------------------------------------------

#: What docs/api.md states: with the default limits, the resident set of a server grows by
#: about 250 MB at most over its idle size, however many large requests arrive at once.
RSS_GROWTH_BOUND_MB = 400


def test_many_large_requests_at_once_stay_within_the_memory_bound(trained: Trained) -> None:
    """32 concurrent 13 MB requests, each within the default limits: every one is answered
    200 or 503 (none reset), and the server's peak resident set stays bounded."""
    kinds = ("page_view", "purchase", "product_view")
    events = [
        {
            "timestamp": f"2024-0{1 + i % 9}-1{i % 10}T10:00:00Z",
            "event_type": kinds[i % 3],
            "amount": 12.5 if i % 3 == 1 else None,
            "channel": "web",
        }
        for i in range(130)
    ]
    customers = [{"customer_id": f"c{j:06d}", "events": events} for j in range(1000)]
    body = json.dumps({"as_of": "2024-12-31T00:00:00Z", "customers": customers}).encode()
    assert 12e6 < len(body) < 16 * 1024 * 1024  # inside max_body_bytes
    with server_process(trained.v1_dir) as server:
        idle_kib = server.memory_kib("VmRSS")
        outcomes: list[str] = []

        def send() -> None:
            try:
                sock = raw_request(server.port, SCORES, body, headers={"Connection": "close"})
                outcomes.append(str(read_response(sock)[0]))
                sock.close()
            except OSError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=send) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        peak_kib = server.memory_kib("VmHWM")
    counts = Counter(outcomes)
    assert set(counts) <= {"200", "503"}, counts
    assert counts["200"] >= 1
    assert (peak_kib - idle_kib) / 1024 < RSS_GROWTH_BOUND_MB, (idle_kib, peak_kib, counts)


# -- non-finite numbers and what a 422 echoes ---------------------------------------------------


def _events_text(amount: str) -> bytes:
    return (
        b'{"customers": [{"customer_id": "c1", "events": [{"timestamp": "2024-06-01T10:00:00Z", '
        b'"event_type": "purchase", "amount": ' + amount.encode() + b"}]}]}"
    )


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.fixture(scope="module")
def live_url(trained: Trained) -> Any:
    with live_server(create_app(settings(trained.v1_dir))) as url:
        yield url


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("path", "text", "loc"),
    [
        # an event's amount
        (SCORES, _events_text, ["body", "customers", 0, "events", 0, "amount"]),
        # a value of a feature vector
        (
            "/v1/scores/features",
            lambda n: (
                b'{"customers": [{"customer_id": "c1", "features": {"x": ' + n.encode() + b"}}]}"
            ),
            ["body", "customers", 0, "features", "x"],
        ),
        # as_of, which is a time: a number is not one
        (
            SCORES,
            lambda n: (
                b'{"as_of": ' + n.encode() + b', "customers": [{"customer_id": "c", "events": []}]}'
            ),
            ["body", "as_of"],
        ),
    ],
)
def test_non_finite_numbers_are_a_422_at_the_field_never_a_500(
    live_url: str, path: str, text: Any, loc: list, number: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        r = httpx.post(
            live_url + path,
            content=text(number),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc
    assert "input" not in error  # the value is not echoed: it cannot be written as JSON
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("event_type", "amount", "status"),
    [
        ("purchase", MAX_AMOUNT * 2, 422),  # a purchase twice the bound
        ("refund", -MAX_AMOUNT * 2, 422),  # a refund as large, written negative
        ("purchase", 10**16, 422),  # a JSON integer beyond the bound
        ("purchase", MAX_AMOUNT, 200),  # the largest accepted magnitude
        ("refund", -MAX_AMOUNT, 200),  # the same, negative
    ],
)
def test_amounts_the_loader_puts_out_of_range_are_a_422(
    live_url: str, event_type: str, amount: float, status: int
) -> None:
    row = {"customer_id": "c", "timestamp": "2024-06-01", "event_type": event_type}
    _, _, summary = validate_events(pd.DataFrame([{**row, "amount": str(amount)}]))
    assert summary.quarantined == ({"amount_out_of_range": 1} if status == 422 else {})
    body = one_event_body(event_type=event_type, amount=amount)
    r = httpx.post(live_url + SCORES, json=body, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    if status == 422:
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "customers", 0, "events", 0, "amount"]
        assert "amount_out_of_range" in error["msg"]


def test_a_422_echoes_a_bounded_part_of_long_values(live_url: str) -> None:
    huge = "x" * 1_000_000
    body = json.dumps(one_event_body(event_type=huge, timestamp=huge))
    r = httpx.post(
        live_url + SCORES,
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422
    assert len(r.content) < 2000
    assert {tuple(e["loc"][-1:]) for e in r.json()["detail"]} == {("timestamp",), ("event_type",)}


# -- time texts: the API accepts exactly what an event file accepts -----------------------


def _loader_time(text: str, *beside: str) -> pd.Timestamp | None:
    """The instant the file loader reads from ``text``, or None if it quarantines the row.

    ``beside``: other times of the same column (a zoned one beside a naive one makes the
    loader parse with the contract's parser instead of Arrow's).
    """
    rows = [
        {"customer_id": "c", "timestamp": t, "event_type": "page_view", "amount": ""}
        for t in (text, *beside)
    ]
    kept, quarantine, _ = validate_events(pd.DataFrame(rows))
    if len(quarantine) and quarantine["row_number"].iloc[0] == 1:
        return None
    return kept["timestamp"].iloc[0]


def _api_time(text: str) -> datetime | None:
    try:
        return Event.model_validate_json(
            json.dumps({"timestamp": text, "event_type": "page_view"})
        ).timestamp
    except ValidationError as exc:
        assert "unparseable_timestamp" in exc.errors()[0]["msg"]
        return None


@pytest.mark.parametrize(
    "text",
    [
        "1700000000",  # epoch seconds in text: the loader needs a unit from a mapping
        "1700000000.5",  # the same with a fraction
        "0",  # the epoch itself
        "2024-06-01T10:00:00z",  # lower-case zone
        "2024-06-01t10:00:00Z",  # lower-case separator
        "2024-06-01T10:00:00,5Z",  # decimal comma
        "2024-06-01T24:00:00",  # hour 24
        "2024-W22-1",  # week date
        "Jun 1 2024",  # not ISO 8601
    ],
)
def test_times_the_loader_quarantines_are_a_422(live_url: str, text: str) -> None:
    assert _loader_time(text) is None
    r = httpx.post(live_url + SCORES, json=one_event_body(timestamp=text), headers=AUTH, timeout=30)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "customers", 0, "events", 0, "timestamp"]
    assert "unparseable_timestamp" in error["msg"]


# Texts that pandas or Arrow read as times but the event contract does not.
NOT_TIMES = [
    "now",
    "today",
    "2024/06/01",
    "20240601",
    "2024",
    "2024-06",
    "2024-06-01T10Z",
    "2024-06-01T10:00+02",
    " 2024-06-01",
    "2024-06-01T10:00:00.1234567891Z",
    "1677-12-31",
    "2262-01-01",
    "2024-06-01T10:00:00+19:00",
]


@st.composite
def near_times(draw: st.DrawFn) -> str:
    """A time text of the contract with one character deleted, inserted or replaced:
    some still are times, most are near misses."""
    text = draw(st.from_regex(TIMESTAMP_PATTERN, fullmatch=True))
    at = draw(st.integers(0, len(text)))
    char = draw(st.sampled_from("0123456789-:/ TtZz+.,\n"))
    edit = draw(st.sampled_from(["delete", "insert", "replace"]))
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    if edit == "insert":
        return text[:at] + char + text[at:]
    return text[:at] + char + text[at + 1 :]


@hsettings(max_examples=300, deadline=None)
@given(
    text=st.from_regex(TIMESTAMP_PATTERN, fullmatch=True)
    | near_times()
    | st.sampled_from(NOT_TIMES)
    | st.text(max_size=40)
)
def test_the_api_accepts_exactly_the_times_the_loader_reads_as_the_same_instant(
    text: str,
) -> None:
    accepted = _api_time(text)
    # alone (Arrow's parser) and in a column mixing zoned and naive times (pandas')
    for loaded in (_loader_time(text), _loader_time(text, "2024-01-01T00:00Z", "2024-01-01")):
        assert (loaded is None) == (accepted is None), text
        if loaded is not None and accepted is not None:
            # The API keeps microseconds (what the features use); the loader nanoseconds.
            gap = loaded.to_pydatetime(warn=False).astimezone(UTC) - accepted
            assert abs(gap.total_seconds()) < 1e-6, text
