"""Fixtures for the HTTP API: two trained models in a throwaway registry, app factories.

Training runs once per session (two small models on simulated data, about half a
minute), with two customer folds rather than the automatic five: no serving test is
about cross-fitting, and each fold costs a fit of both heads. Version 1 of
``lifecycle-serving`` is the champion; version 2 is registered, not promoted, with
different predictions, so a test can tell which model answered.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from customer_lifecycle.features.events import load_events
from customer_lifecycle.scoring.pyfunc import load_bundle
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.train import TrainConfig, train
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from tests.serving.support import AS_OF, NAME, Trained, settings
from tests.tracking import tracking_store


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("serving-registry")
    data = root / "data"
    write_dataset(data, customers=1500, seed=7, as_of=[AS_OF])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # the serving tests' default store for the whole session
    with tracking_store(uri):
        mlflow.create_experiment("lifecycle", artifact_location=(root / "artifacts").as_uri())
        quiet: Callable[[str], None] = lambda _: None  # noqa: E731
        with pytest.MonkeyPatch.context() as cwd:
            cwd.chdir(root)
            train(
                data / "events.parquet",
                labels_path=data / "labels.csv",
                config=TrainConfig(max_rounds=40, seed=1, cv_folds=2),
                register=NAME,
                promote_if_better=True,
                say=quiet,
            )
            train(
                data / "events.parquet",
                labels_path=data / "labels.csv",
                config=TrainConfig(max_rounds=15, seed=2, cv_folds=2, lgb_params={"num_leaves": 7}),
                register=NAME,
                promote_if_better=False,
                say=quiet,
            )
        v1 = load_bundle(f"models:/{NAME}/1").save(root / "bundle-v1")
        v2 = load_bundle(f"models:/{NAME}/2").save(root / "bundle-v2")
        events, _ = load_events(data / "events.parquet")
        yield Trained(root, uri, NAME, v1, v2, events, AS_OF)


@pytest.fixture
def make_client(trained: Trained) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**overrides)``: a started TestClient serving version 1 by default."""
    clients: list[TestClient] = []

    def make(model_uri: str | Path | None = trained.v1_dir, **overrides: Any) -> TestClient:
        client = TestClient(create_app(settings(model_uri, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; loopback tests must not go through a proxy.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        if var in os.environ:
            monkeypatch.delenv(var)


#: ``register(name, copy_of, corrupt=None) -> version``: see :func:`register_version`.
Register = Callable[..., str]
_copies = itertools.count()


@pytest.fixture
def register_version(trained: Trained, tmp_path: Path) -> Register:
    """Register a new version of model ``name``: a copy of the files of version
    ``copy_of`` of the session's model, with ``corrupt(model_dir)`` applied to the copy
    (the MLflow model directory, which holds the bundle directory),
    logged to a run of its own and registered through MLflow's API, as a training run
    would. ``copy_of=None`` registers a version whose artifact is missing.
    """
    client = MlflowClient(tracking_uri=trained.tracking_uri)
    experiment = client.get_experiment_by_name("lifecycle")
    assert experiment is not None

    def register(
        name: str, copy_of: str | None, corrupt: Callable[[Path], None] | None = None
    ) -> str:
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        if copy_of is None:
            source = (tmp_path / f"missing-{next(_copies)}").as_uri()
            return str(client.create_model_version(name, source=source).version)
        # the version's storage location through this client: a models:/ URI would be
        # resolved against the process's registry URI, which other tests may have set
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(trained.name, copy_of),
                dst_path=str(tmp_path / f"copy-{next(_copies)}"),
                tracking_uri=trained.tracking_uri,
            )
        )
        if corrupt is not None:
            corrupt(local)
        run = client.create_run(experiment.experiment_id)
        client.log_artifacts(run.info.run_id, str(local), "model")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        return str(mv.version)

    return register
