"""The MLproject entry points run offline with `mlflow run . --env-manager local`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def mlflow_run(entry: str, params: dict[str, str], env: dict[str, str], cwd: Path) -> None:
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_simulate_train_score_entry_points(tmp_path: Path) -> None:
    # an in-process training earlier in the session leaves MLflow's run and experiment
    # variables behind; a project run against another store must not inherit them
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {
        **inherited,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        # the entry points call the `lifecycle` console script of this environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    data = tmp_path / "data"
    # plumbing only: the fewest customers that still give every stage enough examples
    mlflow_run("simulate", {"customers": "800", "seed": "3", "out": str(data)}, env, tmp_path)
    mlflow_run(
        "train",
        {"events": str(data / "events.parquet"), "labels": str(data / "labels.csv")},
        env,
        tmp_path,
    )
    out = tmp_path / "scores.csv"
    mlflow_run(
        "score",
        {"events": str(data / "events.parquet"), "as_of": "2024-12-31", "out": str(out)},
        env,
        tmp_path,
    )
    scores = pd.read_csv(out)
    assert list(scores.columns[:4]) == ["customer_id", "stage", "churn_probability", "churn_risk"]
    assert len(scores) == len(pd.read_csv(data / "labels.csv"))
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias("lifecycle", "champion").version in (1, "1")
