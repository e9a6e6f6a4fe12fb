"""MLflow plumbing: where runs go, logging the model once, registering and promoting.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite file
``mlflow.db`` in the working directory with artifacts under ``mlartifacts/`` beside it.
Serving loads ``models:/<name>@champion``; aliases replace the deprecated stages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
from customer_lifecycle.scoring.pyfunc import default_tracking_uri
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
DEFAULT_EXPERIMENT = "lifecycle"


def configure(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the tracking store and experiment; return the tracking URI."""
    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_RUN_ID"):
        return uri  # inside `mlflow run`: the project's run and experiment are already set
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if "MLFLOW_TRACKING_URI" not in os.environ:
            location = Path("mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested configuration as flat MLflow params (``a.b.c``); lists become strings."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    text = str(value)
    return {prefix: text if len(text) <= 500 else text[:497] + "..."}


def promote(name: str, version: str | int | None = None) -> str:
    """Point the ``champion`` alias of registered model ``name`` at ``version`` (default: latest).

    Returns the version promoted.
    """
    mlflow.set_tracking_uri(default_tracking_uri())
    client = MlflowClient()
    if version is None:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"no registered model named {name!r}")
        version = max(int(v.version) for v in versions)
    try:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    except MlflowException as exc:
        raise ValueError(f"cannot promote {name} version {version}: {exc.message}") from None
    return str(version)


def champion_version(name: str) -> str | None:
    """The version the ``champion`` alias points at, or ``None``."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None
