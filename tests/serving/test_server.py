"""The real server: ``lifecycle serve`` in a subprocess (one process or a supervisor and
workers), SIGTERM draining and exit status, hot swap under load, and a soak test in
which a broken version is promoted while requests run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, STAGE_FILE, ModelBundle
from customer_lifecycle.serving.app import create_app
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from customer_lifecycle.cli import app as cli
from tests.serving.support import (
    AUTH,
    KEYS,
    Trained,
    busy_customers,
    customer_payload,
    live_server,
    settings,
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(model: Path | str, port: int, keys: Path, *options: str) -> list[str]:
    """The ``lifecycle serve`` command line, run by this interpreter."""
    return [
        sys.executable,
        "-c",
        "from customer_lifecycle.cli import app; app()",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--api-keys-file",
        str(keys),
        *options,
    ]


def _server_env(**lifecycle: str) -> dict[str, str]:
    # The model is a bundle directory: nothing of MLflow's is needed, and an in-process
    # training earlier in the session leaves MLflow variables behind (tests/test_mlproject.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LIFECYCLE_"))}
    return env | {f"LIFECYCLE_{k.upper()}": v for k, v in lifecycle.items()}


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited early: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _start_upload(port: int, body: dict) -> tuple[socket.socket, bytes]:
    """A scoring request whose body is only partly sent: (connection, the rest)."""
    payload = json.dumps(body).encode()
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(
        b"POST /v1/scores HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEYS[1]}\r\nContent-Length: {len(payload)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + payload[:100]
    )
    return slow, payload[100:]


def _finish_upload(slow: socket.socket, rest: bytes) -> tuple[bytes, bytes]:
    """Send the rest of the body; the response's (status line and headers, content)."""
    slow.sendall(rest)
    response = b""
    while chunk := slow.recv(65536):
        response += chunk
    slow.close()
    head, _, content = response.partition(b"\r\n\r\n")
    return head, content


def test_serve_command_scores_over_http_then_drains_on_sigterm(
    trained: Trained, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[1]}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _server_env(shutdown_delay_seconds="1.5", reload_interval_seconds="0")
    proc = subprocess.Popen(
        _serve(trained.v1_dir, port, keys),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        _wait_ready(url, proc)
        auth = {"Authorization": f"Bearer {KEYS[1]}"}
        cid = busy_customers(trained.events, trained.as_of, 1)[0]
        body = {
            "as_of": "2024-12-31T00:00:00Z",
            "customers": [customer_payload(trained.events, cid)],
        }
        r = httpx.post(f"{url}/v1/scores", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["scores"][0]["customer_id"] == cid

        # A request still uploading its body when SIGTERM arrives.
        slow, rest = _start_upload(port, body)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # Readiness turns 503 first, while the server still accepts connections.
        ready = httpx.get(f"{url}/readyz", timeout=5)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        deadline = time.monotonic() + 15
        while _listening(port):  # then the listener closes: graceful shutdown has begun
            assert time.monotonic() < deadline, "the server never stopped listening"
            time.sleep(0.05)
        assert proc.poll() is None  # still finishing the in-flight request
        head, content = _finish_upload(slow, rest)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(content)["scores"][0]["customer_id"] == cid
        assert proc.wait(30) == 0  # a completed drain is a clean exit, as with workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = [json.loads(line) for line in (proc.stderr.read() if proc.stderr else "").splitlines()]
    requests = [x for x in logs if x.get("message") == "request"]
    assert any(x["path"] == "/v1/scores" and x["status"] == 200 for x in requests)
    assert all(len(x["request_id"]) == 32 for x in requests)


def test_serve_command_refuses_to_start_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path)], env=env)
    assert result.exit_code == 2
    assert "no API keys" in result.output
    assert "Traceback" not in result.output


def test_serve_command_refuses_fewer_than_one_worker(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --workers must be at least 1, got 0"


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``, from ``/proc``: process id -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # fields after the name: state, ppid
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode()
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an exited child not yet reaped by whoever inherited it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_serve_command_with_two_workers_both_answer_then_drain_on_sigterm(
    trained: Trained, tmp_path: Path, client: TestClient
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[1]}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEYS[1]}"}
    cid = busy_customers(trained.events, trained.as_of, 1)[0]
    body = {"as_of": "2024-12-31T00:00:00Z", "customers": [customer_payload(trained.events, cid)]}
    # what one in-process app on the same model answers: every worker must answer the same
    expected = client.post("/v1/scores", json=body, headers=AUTH).json()
    assert expected["scores"][0]["customer_id"] == cid

    def score() -> dict[str, Any]:
        r = httpx.post(f"{url}/v1/scores", json=body, headers=auth, timeout=30)  # a new connection
        assert r.status_code == 200, r.text
        return dict(r.json())

    log = tmp_path / "serve.log"
    env = _server_env(shutdown_delay_seconds="1.5", reload_interval_seconds="0")
    with log.open("w") as out:  # a file, not a pipe nobody reads while three processes log
        proc = subprocess.Popen(
            _serve(trained.v1_dir, port, keys, "--workers", "2"),
            env=env,
            stderr=out,
            text=True,
            cwd=Path(__file__).parents[2],
        )
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        # both workers listening: each logs this once its model is loaded
        while log.read_text().count('"Application startup complete."') < 2:
            assert proc.poll() is None, f"server exited early: {log.read_text()}"
            assert time.monotonic() < deadline, "the workers never became ready"
            time.sleep(0.2)
        children = _children(proc.pid)
        workers = [p for p, cmd in children.items() if "spawn_main" in cmd]
        assert len(workers) == 2, children
        assert not any(KEYS[1] in cmd for cmd in children.values())  # no key in `ps`

        assert [score() for _ in range(3)] == [expected] * 3
        with ThreadPoolExecutor(8) as pool:  # concurrent load on both
            assert list(pool.map(lambda _: score(), range(40))) == [expected] * 40
        # Each worker answers by itself: with the other one stopped, a new connection can
        # only be accepted by this one.
        for worker in workers:
            others = [p for p in workers if p != worker]
            for p in others:
                os.kill(p, signal.SIGSTOP)
            try:
                assert score() == expected
            finally:
                for p in others:
                    os.kill(p, signal.SIGCONT)

        # A request still uploading its body when the supervisor gets SIGTERM.
        slow, rest = _start_upload(port, body)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # The supervisor passes it on to the workers (it looks for signals twice a
        # second); readiness then turns 503 while they still accept connections.
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{url}/readyz", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "readiness never turned 503"
            time.sleep(0.05)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        deadline = time.monotonic() + 15
        while _listening(port):  # then the port closes: graceful shutdown has begun
            assert time.monotonic() < deadline, "the server never stopped listening"
            time.sleep(0.05)
        assert proc.poll() is None  # still waiting for the worker finishing the request
        head, content = _finish_upload(slow, rest)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(content) == expected
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while left := [p for p in children if _running(p)]:  # workers, resource tracker
            assert time.monotonic() < deadline, f"left behind: {[children[p] for p in left]}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in children:
            if _running(p):
                os.kill(p, signal.SIGKILL)
    logs = [json.loads(line) for line in log.read_text().splitlines()]
    scored = [x for x in logs if x.get("path") == "/v1/scores"]
    assert len(scored) == 3 + 40 + 2 + 1 and all(x["status"] == 200 for x in scored)
    assert not [x for x in logs if x["level"] in ("warning", "error")], log.read_text()


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape of ``/metrics``: (sample name, labels) -> value."""
    r = httpx.get(f"{url}/metrics", timeout=30)  # a new connection: any worker may answer
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _model_info_pids(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[int]:
    return {
        int(dict(labels)["pid"])
        for (name, labels), value in samples.items()
        if name == "lifecycle_model_info" and value == 1
    }


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_serve_command_with_two_workers_metrics_add_up_every_worker(
    trained: Trained, tmp_path: Path
) -> None:
    """Every scrape reports the whole server, whichever worker answers, also after a
    worker is replaced; the metrics directory is private and goes with the server."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[1]}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEYS[1]}"}
    cid = busy_customers(trained.events, trained.as_of, 1)[0]
    body = {"as_of": "2024-12-31T00:00:00Z", "customers": [customer_payload(trained.events, cid)]}
    tmp = tmp_path / "tmp"  # the server's temporary directory: only its metrics go there
    tmp.mkdir()
    log = tmp_path / "serve.log"
    env = _server_env(shutdown_delay_seconds="0", reload_interval_seconds="0") | {
        "TMPDIR": str(tmp)
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            _serve(trained.v1_dir, port, keys, "--workers", "2"),
            env=env,
            stderr=out,
            text=True,
            cwd=Path(__file__).parents[2],
        )
    children: dict[int, str] = {}

    def wait_started(count: int) -> None:
        deadline = time.monotonic() + 120
        while log.read_text().count('"Application startup complete."') < count:
            assert proc.poll() is None, f"server exited early: {log.read_text()}"
            assert time.monotonic() < deadline, "the workers never became ready"
            time.sleep(0.2)

    def alone(worker: int, others: list[int], call: Callable[[], Any]) -> Any:
        """``call`` with every other worker stopped: only ``worker`` can accept."""
        for p in others:
            os.kill(p, signal.SIGSTOP)
        try:
            return call()
        finally:
            for p in others:
                os.kill(p, signal.SIGCONT)

    def score() -> None:
        r = httpx.post(f"{url}/v1/scores", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text

    try:
        wait_started(2)
        children = _children(proc.pid)
        workers = sorted(p for p, cmd in children.items() if "spawn_main" in cmd)
        assert len(workers) == 2, children
        (metrics_dir,) = tmp.iterdir()
        assert metrics_dir.stat().st_mode & 0o777 == 0o700
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        assert f"PROMETHEUS_MULTIPROC_DIR={metrics_dir}".encode() in environ

        k = 0
        for worker in workers:  # each worker scores some, by itself
            others = [p for p in workers if p != worker]
            for _ in range(3):
                alone(worker, others, score)
                k += 1
        scored = ("lifecycle_customers_scored_total", frozenset({("endpoint", "events")}))
        ok = frozenset({("route", "/v1/scores"), ("method", "POST"), ("status", "200")})
        requests = ("lifecycle_http_requests_total", ok)
        latency = (
            "lifecycle_http_request_duration_seconds_count",
            frozenset({("route", "/v1/scores")}),
        )
        in_flight = ("lifecycle_http_requests_in_flight", frozenset())

        def check(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
            assert samples[scored] == k
            assert samples[requests] == k
            assert samples[latency] == k
            assert samples[in_flight] == 0  # summed over the live workers, not one per pid

        def settle() -> None:
            # A request is counted just after its response is sent: wait for the last one.
            deadline = time.monotonic() + 10
            while _samples(url).get(requests, 0) < k:
                assert time.monotonic() < deadline, "the requests were never all counted"
                time.sleep(0.05)

        settle()
        scrapes = [alone(w, [p for p in workers if p != w], lambda: _samples(url)) for w in workers]
        scrapes += [_samples(url) for _ in range(4)]
        for samples in scrapes:
            check(samples)
            assert _model_info_pids(samples) == set(workers)  # one series per live worker

        # A worker that dies is replaced: its counts stay, its gauges go.
        os.kill(workers[0], signal.SIGKILL)
        wait_started(3)
        deadline = time.monotonic() + 30
        while workers[0] in (
            now := [p for p, c in _children(proc.pid).items() if "spawn_main" in c]
        ):
            assert time.monotonic() < deadline, "the dead worker was never replaced"
            time.sleep(0.1)
        children |= _children(proc.pid)
        score()
        k += 1
        settle()
        for _ in range(4):
            samples = _samples(url)
            check(samples)
            assert _model_info_pids(samples) == set(now)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not list(tmp.iterdir())  # the metrics directory is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in children:
            if _running(p):
                os.kill(p, signal.SIGKILL)
    logs = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [x for x in logs if x["level"] == "error"], log.read_text()


def test_serve_command_stops_when_the_workers_cannot_start(
    trained: Trained, tmp_path: Path
) -> None:
    """A worker failing to build its app stops the server, instead of respawning forever."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[1]}\n")
    env = _server_env(playbook_path=str(tmp_path / "missing.yaml"))
    proc = subprocess.run(
        _serve(trained.v1_dir, _free_port(), keys, "--workers", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 3, proc.stderr  # uvicorn's status for a failed startup
    failures = [
        json.loads(line) for line in proc.stderr.splitlines() if "worker failed to start" in line
    ]
    assert failures and "missing.yaml" in failures[0]["message"]
    assert "exception" not in failures[0]  # a user's error: one line, no traceback


def test_hot_swap_under_load_every_response_is_whole_and_from_one_version(
    trained: Trained,
) -> None:
    """Promote a new version while requests are in flight: no error, no mixed response."""
    registry = MlflowClient(tracking_uri=trained.tracking_uri)
    registry.set_registered_model_alias(trained.name, "swap-test", "1")
    ids = busy_customers(trained.events, trained.as_of, 6)
    body = {
        "as_of": f"{trained.as_of}T00:00:00Z",
        "customers": [customer_payload(trained.events, c) for c in ids],
    }
    expected: dict[str, dict[str, float]] = {}
    for version, path in (("1", trained.v1_dir), ("2", trained.v2_dir)):
        scores = ModelBundle.load(path).predict_events(trained.events, as_of=trained.as_of)
        expected[version] = dict(
            zip(scores["customer_id"], scores["churn_probability"], strict=True)
        )
    assert any(expected["1"][c] != expected["2"][c] for c in ids)  # versions are told apart

    app = create_app(settings(f"models:/{trained.name}@swap-test", reload_interval_seconds=0.1))
    results: list[tuple[int, Any]] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                r = http.post(
                    "/v1/scores", json=body, headers={"Authorization": f"Bearer {KEYS[0]}"}
                )
                results.append((r.status_code, r.json()))

    with live_server(app) as url:
        workers = [threading.Thread(target=hammer, args=(url,)) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        registry.set_registered_model_alias(trained.name, "swap-test", "2")
        deadline = time.monotonic() + 60
        while not any(doc.get("model_version") == "2" for _, doc in results[-3:]):
            assert time.monotonic() < deadline, "version 2 was never served"
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for w in workers:
            w.join(30)

    assert len(results) > 10
    assert all(status == 200 for status, _ in results), {s for s, _ in results}
    versions = []
    for _, doc in results:
        version = doc["model_version"]
        versions.append(version)
        assert [s["customer_id"] for s in doc["scores"]] == ids
        for score in doc["scores"]:
            assert score["model_version"] == version
            assert score["churn_probability"] == pytest.approx(
                expected[version][score["customer_id"]], abs=1e-12
            )
    assert versions[0] == "1" and versions[-1] == "2"
    # Once swapped, never back: after the first version-2 answer, only requests the
    # other workers had in flight before the swap (one each) can still be version 1.
    assert versions[versions.index("2") :].count("1") <= len(workers) - 1


# -- soak: a broken version promoted under load -------------------------------------------------


def _garble_trees(model_dir: Path) -> None:
    """Cut the stage head's tree file in the middle of a tree (LightGBM aborts on some)."""
    (bundle,) = {p.parent for p in model_dir.rglob(BUNDLE_FILE)}
    text = (bundle / STAGE_FILE).read_bytes()
    (bundle / STAGE_FILE).write_bytes(text[: len(text) // 2])


class _Load:
    """Client threads sending ``rate`` requests per second in all, each on its own
    keep-alive connection; every outcome is kept as (time, status, model version)."""

    def __init__(self, url: str, body: dict, *, rate: float, threads: int) -> None:
        self.results: list[tuple[float, int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url, body, threads / rate))
            for _ in range(threads)
        ]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, url: str, body: dict, interval: float) -> None:
        auth = {"Authorization": f"Bearer {KEYS[1]}"}
        next_at = time.monotonic()
        with httpx.Client(base_url=url, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    r = http.post("/v1/scores", json=body, headers=auth)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    self.results.append((time.monotonic(), r.status_code, version))
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def last_versions(self, n: int) -> set[str | None]:
        return {v for _, _, v in self.results[-n:]}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_soak_a_broken_version_promoted_under_load_fails_no_request(
    trained: Trained, tmp_path: Path, register_version: Callable[..., str], workers: int
) -> None:
    """``lifecycle serve`` follows ``models:/NAME@champion`` while about 200 requests/s
    run; a version with a garbled tree file is promoted, then a good one. Not one request
    fails, the old version answers until the good one is promoted, the refusal is logged
    once per worker and counted, and the good version is taken up."""
    name = f"lifecycle-soak-{workers}"
    old = register_version(name, "1")
    broken = register_version(name, "1", _garble_trees)
    new = register_version(name, "2")
    registry = MlflowClient(tracking_uri=trained.tracking_uri)
    registry.set_registered_model_alias(name, "champion", old)
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[1]}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cid = busy_customers(trained.events, trained.as_of, 1)[0]
    customer = customer_payload(trained.events, cid, limit=30)
    body = {"as_of": "2024-12-31T00:00:00Z", "customers": [customer]}
    env = _server_env(reload_interval_seconds="0.5", shutdown_delay_seconds="0") | {
        "MLFLOW_TRACKING_URI": trained.tracking_uri
    }
    invalid = ("lifecycle_model_reload_failures_total", frozenset({("reason", "invalid")}))
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _serve(f"models:/{name}@champion", port, keys, "--workers", str(workers)),
            env=env,
            stderr=out,
            text=True,
            cwd=Path(__file__).parents[2],
        )
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while log.read_text().count('"Application startup complete."') < workers:
            assert proc.poll() is None, f"server exited early: {log.read_text()}"
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        children = _children(proc.pid)
        with _Load(url, body, rate=200, threads=4) as load:
            started = time.monotonic()
            time.sleep(1)  # requests in flight before the promotion (asserted below)
            registry.set_registered_model_alias(name, "champion", broken)
            promoted_broken = time.monotonic()
            deadline = time.monotonic() + 120
            while _samples(url).get(invalid, 0) < workers:  # every worker has refused it
                assert proc.poll() is None, "the server died"
                assert time.monotonic() < deadline, "the broken version was never refused"
                ready = httpx.get(f"{url}/readyz", timeout=30)
                assert (ready.status_code, ready.json()["model_version"]) == (200, old)
                time.sleep(0.2)
            time.sleep(3)  # six more polls that must leave it alone
            promoted = time.monotonic()
            registry.set_registered_model_alias(name, "champion", new)
            deadline = time.monotonic() + 120
            while not (
                load.last_versions(40) == {new}
                and _model_info_versions(_samples(url)) == {new}  # every worker
            ):
                assert proc.poll() is None, "the server died"
                assert time.monotonic() < deadline, "the good version was never served"
                time.sleep(0.2)
            time.sleep(1)
            elapsed = time.monotonic() - started
        final = _samples(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in children:
            if _running(p):
                os.kill(p, signal.SIGKILL)

    results = load.results
    assert not load.errors, load.errors[:5]
    # The rate depends on the machine (it is shared in CI): what matters is that requests
    # ran all along, also while the broken version was checked and refused.
    rate = f"{len(results)} requests in {elapsed:.1f} s"
    assert sum(promoted_broken <= t < promoted for t, _, _ in results) >= 200, rate
    times = [t for t, _, _ in results]
    # both promotions fell strictly inside the load: requests answered before and after each
    assert min(times) < promoted_broken and max(times) > promoted, rate
    assert max(b - a for a, b in itertools.pairwise(times)) < 5, rate  # never stalled
    assert {status for _, status, _ in results} == {200}
    assert {v for t, _, v in results if t < promoted} == {old}  # the old one throughout
    assert {v for _, _, v in results} == {old, new}
    assert final[invalid] == workers  # once per worker: not tried again at every poll
    logs = [json.loads(line) for line in log.read_text().splitlines()]
    refused = [x for x in logs if x.get("message") == "model refused"]
    assert len(refused) == workers, refused
    for line in refused:
        assert (line["refused_version"], line["reason"], line["serving_version"]) == (
            broken,
            "invalid",
            old,
        )
        assert "stage_model.txt" in line["error"] and "exception" not in line
    assert not [x for x in logs if x["level"] == "error" and x not in refused], log.read_text()


def _model_info_versions(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {
        dict(labels)["version"]
        for (name, labels), value in samples.items()
        if name == "lifecycle_model_info" and value == 1
    }
