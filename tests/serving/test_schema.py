"""Schemathesis, every check and every phase, against the app's OpenAPI schema over HTTP.

Schemathesis' pytest integration does not work with this pytest version, so the
schemathesis command line runs against a live server: NUL bytes and any UTF-8 text in
strings, and non-finite numbers (``NaN``, ``Infinity``) in bodies through the hooks in
``schemathesis_hooks.py``. Every operation goes through every phase: its schema
examples, the coverage phase (boundary and schema-violating values, drawn
systematically, not at random), 150 fuzzed examples, and stateful sequences. Nearly all
of the run's time is schemathesis drawing and checking cases, not the server (about 42 s
of its CPU to 7 s of the server's at 100 examples), and the fuzzing phase is most of
that: 150 fuzzed examples rather than 300 make the test about half as long.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from customer_lifecycle.serving.app import create_app

from tests.serving.support import KEYS, Trained, live_server, settings

pytestmark = pytest.mark.slow


def test_api_conforms_to_its_openapi_schema(trained: Trained, tmp_path: Path) -> None:
    app = create_app(settings(trained.v1_dir, max_customers_per_request=50))
    with live_server(app) as url:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {KEYS[0]}",
                "--max-examples",
                "150",
                "--generation-allow-x00",
                "true",
                "--generation-codec",
                "utf-8",
                "--seed",
                "1",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--report-dir",
                str(tmp_path),
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.serving.schemathesis_hooks",
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            },
        )
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
