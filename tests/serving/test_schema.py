"""Schemathesis, every check and every phase, against the app's OpenAPI schema over HTTP.

Schemathesis' pytest integration does not work with this pytest version, so the
schemathesis command line runs against a live server; examples per operation are
bounded so the run takes well under a minute.
"""

from __future__ import annotations

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
                "30",
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
            timeout=300,
            cwd=tmp_path,
        )
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
