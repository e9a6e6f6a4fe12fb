"""A broken model version can neither take the server down nor replace the served model.

Broken versions are made as a registry can hold them: a good version's files, copied,
corrupted and registered through MLflow's API (see ``register_version`` in conftest).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, STAGE_FILE
from customer_lifecycle.scoring.check import ModelRefused, check_in_subprocess
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.registry import ModelRef, load_served_model
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from tests.serving.support import AUTH, Trained, settings

Register = Callable[..., str]  # the register_version fixture

pytestmark = pytest.mark.slow  # each new version is checked in a child process (seconds)


def _bundle_in(model_dir: Path) -> Path:
    (bundle,) = {p.parent for p in model_dir.rglob(BUNDLE_FILE)}
    return bundle


def garble_trees(model_dir: Path) -> None:
    """The stage head's tree file cut in the middle of a tree."""
    file = _bundle_in(model_dir) / STAGE_FILE
    text = file.read_bytes()
    file.write_bytes(text[: len(text) // 2])


def nan_calibration(model_dir: Path) -> None:
    file = _bundle_in(model_dir) / BUNDLE_FILE
    doc = json.loads(file.read_text())
    doc["churn_platt"] = [float("nan"), 0.0]
    file.write_text(json.dumps(doc))  # NaN as JSON allows


def not_a_lifecycle_model(model_dir: Path) -> None:
    """Another flavour's MLmodel: no bundle to serve."""
    shutil.rmtree(_bundle_in(model_dir))
    (model_dir / "MLmodel").write_text(
        yaml.safe_dump({"flavors": {"sklearn": {"pickled_model": "model.pkl"}}})
    )


def _scores(c: TestClient) -> dict[str, Any]:
    body = {
        "as_of": "2024-12-31T00:00:00Z",
        "customers": [
            {
                "customer_id": "c1",
                "events": [{"timestamp": "2024-12-01T00:00:00Z", "event_type": "page_view"}],
            }
        ],
    }
    r = c.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _metric(c: TestClient, line_start: str) -> float:
    (line,) = [x for x in c.get("/metrics").text.splitlines() if x.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "model refused"]


# -- the check in a child process ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (garble_trees, "stage_model.txt"),  # a tree file cut mid-tree
        (not_a_lifecycle_model, "not a lifecycle model"),  # another kind of model
    ],
)
def test_the_check_refuses_a_broken_model_in_one_line(
    trained: Trained, tmp_path: Path, corrupt: Callable[[Path], None], message: str
) -> None:
    model_dir = Path(shutil.copytree(_bundle_in_parent(trained, tmp_path), tmp_path / "m"))
    corrupt(model_dir)
    with pytest.raises(ModelRefused) as info:
        check_in_subprocess(model_dir)
    assert info.value.reason == "invalid"
    assert message in str(info.value) and "\n" not in str(info.value)


def _bundle_in_parent(trained: Trained, tmp_path: Path) -> Path:
    """An MLflow model directory holding version 1's bundle (no registry needed)."""
    model = tmp_path / "model-v1"
    shutil.copytree(trained.v1_dir, model / "artifacts" / "bundle")
    artifacts = {"bundle": {"path": "artifacts/bundle"}}
    (model / "MLmodel").write_text(
        yaml.safe_dump({"flavors": {"python_function": {"artifacts": artifacts}}})
    )
    return model


def test_the_check_passes_a_sound_model(trained: Trained, tmp_path: Path) -> None:
    check_in_subprocess(_bundle_in_parent(trained, tmp_path))
    check_in_subprocess(trained.v1_dir)


def _child_checks() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"customer_lifecycle.scoring.check" in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_check_that_crashes_kills_only_the_child(trained: Trained) -> None:
    """A fault in native code while checking (here a real SIGSEGV sent to the child) is a
    refusal naming the signal; this process goes on."""
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            check_in_subprocess(trained.v1_dir)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not (children := _child_checks()):
        assert time.monotonic() < deadline, "the check never started"
        time.sleep(0.01)
    os.kill(children[0], signal.SIGSEGV)
    thread.join(60)
    error = outcome["error"]
    assert isinstance(error, ModelRefused) and error.reason == "crashed"
    assert "SIGSEGV" in str(error)


def test_a_check_that_hangs_is_stopped_and_refused(trained: Trained) -> None:
    started = time.monotonic()
    with pytest.raises(ModelRefused, match="longer than 0.2 s") as info:
        check_in_subprocess(trained.v1_dir, timeout=0.2)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 10
    assert not _child_checks()  # stopped, not left running


# -- the server: refuse, keep serving, say why --------------------------------------------------


def test_broken_versions_are_refused_and_the_old_model_keeps_serving(
    make_client: Callable[..., TestClient],
    trained: Trained,
    register_version: Register,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "lifecycle-refusals"
    good = register_version(name, "1")
    broken = {
        "invalid stage_model.txt": register_version(name, "1", garble_trees),
        "invalid churn_platt": register_version(name, "1", nan_calibration),
        "invalid not a lifecycle model": register_version(name, "1", not_a_lifecycle_model),
        "invalid neither a bundle nor an MLflow model": register_version(name, None),  # missing
    }
    registry = MlflowClient(tracking_uri=trained.tracking_uri)
    registry.set_registered_model_alias(name, "champion", good)
    c = make_client(model_uri=f"models:/{name}@champion")
    assert _scores(c)["model_version"] == good

    for case, version in broken.items():
        reason, message = case.split(" ", 1)
        registry.set_registered_model_alias(name, "champion", version)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="customer_lifecycle.serving"):
            r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 502, r.text
        assert message in r.json()["detail"]
        (line,) = _refusals(caplog)  # one line, no traceback
        assert line.exc_info is None
        assert (line.reason, line.refused_version, line.serving_version) == (  # type: ignore[attr-defined]
            reason,
            version,
            good,
        )
        # the old model serves on, ready, and says what it refused
        assert _scores(c)["model_version"] == good
        assert c.get("/readyz").json() == {"status": "ready", "model_version": good}
        info = c.get("/v1/model", headers=AUTH).json()
        assert info["version"] == good
        assert info["last_refused"]["version"] == version
        assert info["last_refused"]["reason"] == reason
        assert message in info["last_refused"]["error"]

    assert _metric(c, 'lifecycle_model_reload_failures_total{reason="invalid"}') == len(broken)
    assert _metric(c, 'lifecycle_model_reload_failures_total{reason="crashed"}') == 0
    assert _metric(c, 'lifecycle_model_reloads_total{outcome="failed"}') == len(broken)


def test_the_poller_refuses_a_broken_version_once_then_takes_a_good_one(
    make_client: Callable[..., TestClient],
    trained: Trained,
    register_version: Register,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "lifecycle-poll-refusal"
    v1, bad, v2 = (
        register_version(name, "1"),
        register_version(name, "1", garble_trees),
        register_version(name, "2"),
    )
    registry = MlflowClient(tracking_uri=trained.tracking_uri)
    registry.set_registered_model_alias(name, "champion", v1)
    c = make_client(model_uri=f"models:/{name}@champion", reload_interval_seconds=0.1)
    holder = c.app.state.server.holder  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="customer_lifecycle.serving"):
        registry.set_registered_model_alias(name, "champion", bad)
        deadline = time.monotonic() + 120
        while holder.refused is None:
            assert _scores(c)["model_version"] == v1
            assert time.monotonic() < deadline, "the broken version was never checked"
            time.sleep(0.05)
        time.sleep(1.0)  # ten more polls: the refused version is not tried again
        assert _scores(c)["model_version"] == v1
        assert len(_refusals(caplog)) == 1
        assert _metric(c, 'lifecycle_model_reload_failures_total{reason="invalid"}') == 1
        registry.set_registered_model_alias(name, "champion", v2)
        deadline = time.monotonic() + 120
        while _scores(c)["model_version"] != v2:
            assert time.monotonic() < deadline, "the good version was never served"
            time.sleep(0.1)
    assert len(_refusals(caplog)) == 1


def test_without_a_valid_model_at_start_the_server_is_up_and_not_ready(
    make_client: Callable[..., TestClient], trained: Trained, register_version: Register
) -> None:
    name = "lifecycle-broken-start"
    bad = register_version(name, "1", nan_calibration)
    registry = MlflowClient(tracking_uri=trained.tracking_uri)
    registry.set_registered_model_alias(name, "champion", bad)
    c = make_client(model_uri=f"models:/{name}@champion", reload_interval_seconds=0.1)
    ready = c.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "no_model")
    body = {"as_of": "2024-12-31T00:00:00Z", "customers": []}
    assert c.post("/v1/scores", json=body, headers=AUTH).status_code == 503
    assert c.get("/healthz").status_code == 200
    good = register_version(name, "2")
    registry.set_registered_model_alias(name, "champion", good)
    deadline = time.monotonic() + 120
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the good version was never served"
        time.sleep(0.1)
    assert _scores(c)["model_version"] == good


@pytest.mark.parametrize(
    "raised",
    [
        RuntimeError("boom\nsecond line"),  # an unexpected error type, two lines
        SystemExit(1),  # what a native library's Python wrapper might call
    ],
)
def test_a_load_that_raises_anything_is_a_refusal(
    trained: Trained, raised: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """The real loader first; then the next load fails with ``raised``."""
    playbook = load_playbook()
    calls: list[str] = []

    def loader(uri: str, ref: ModelRef) -> ServedModel:
        calls.append(uri)
        if len(calls) > 1:
            raise raised
        return load_served_model(uri, ref, playbook=playbook, reasons=3)

    with TestClient(create_app(settings(trained.v1_dir), loader=loader)) as c:
        before = _scores(c)["model_version"]
        with caplog.at_level(logging.INFO, logger="customer_lifecycle.serving"):
            r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 502
        assert _scores(c)["model_version"] == before
        (line,) = _refusals(caplog)
        assert line.reason == "error"  # type: ignore[attr-defined]
        assert line.exc_info is None and "\n" not in line.error  # type: ignore[attr-defined]
        assert type(raised).__name__ in line.error  # type: ignore[attr-defined]
        assert _metric(c, 'lifecycle_model_reload_failures_total{reason="error"}') == 1
