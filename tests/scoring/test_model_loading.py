"""The product's loader reads a model as data: no code stored with it runs, nothing is written.

A real SQLite tracking store and registry in a temporary directory; the model's stored
code file is replaced by one that would leave a marker file (and fail) if it ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from customer_lifecycle.features.events import load_events
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.scoring.pyfunc import load_bundle
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.train import TrainConfig, train

from tests.tracking import tracking_store

AS_OF = "2024-12-31"
NAME = "loading-test"


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("loading")
    data = root / "data"
    write_dataset(data, customers=800, seed=3, as_of=[AS_OF])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp, tracking_store(uri):
        mp.chdir(root)
        mlflow.create_experiment("lifecycle", artifact_location=(root / "artifacts").as_uri())
        quiet: Callable[[str], None] = lambda _: None  # noqa: E731
        result = train(
            data / "events.parquet",
            labels_path=data / "labels.csv",
            config=TrainConfig(max_rounds=10, seed=1, cv_folds=2),  # plumbing: few folds
            register=NAME,
            promote_if_better=True,
            say=quiet,
        )
        (mlmodel,) = (root / "artifacts").rglob("MLmodel")
        model_dir = mlmodel.parent
        marker = root / "model-code-ran"
        for code in model_dir.rglob("*.py"):
            code.write_text(
                f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                "raise SystemExit('model code must not run')\n"
            )
        events, _ = load_events(data / "events.parquet")
        yield root, model_dir, marker, result.run_id, events


@pytest.mark.parametrize(
    "reference",
    [
        "models:/{name}/1",  # a registry version
        "models:/{name}@champion",  # the serving alias
        "runs:/{run_id}/model",  # a run's logged model
        "{model_dir}",  # a downloaded MLflow model directory
    ],
)
def test_every_reference_is_read_as_data(registry, reference: str) -> None:  # type: ignore[no-untyped-def]
    root, model_dir, marker, run_id, events = registry
    before = _snapshot(root / "artifacts")
    ref = reference.format(name=NAME, run_id=run_id, model_dir=model_dir)
    bundle = load_bundle(ref)
    assert isinstance(bundle, ModelBundle)
    assert not marker.exists(), "the code file stored with the model was executed"
    assert _snapshot(root / "artifacts") == before, "loading wrote into the artifact store"
    scores = bundle.predict_events(events, as_of=AS_OF)
    assert len(scores) > 0
    assert np.isfinite(scores["churn_probability"]).all()


def test_mlflow_pyfunc_would_have_run_it(registry) -> None:  # type: ignore[no-untyped-def]
    # the control: MLflow's own loader executes the stored code (it trusts the store)
    _, _, marker, _, _ = registry
    with pytest.raises(BaseException):  # noqa: B017 - SystemExit from the stored code
        mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert marker.exists()
    marker.unlink()


def test_a_bundle_path_outside_the_model_is_refused(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model_dir, _, _, _ = registry
    copy = tmp_path / "model"
    copy.mkdir()
    text = (model_dir / "MLmodel").read_text()
    (copy / "MLmodel").write_text(text.replace("path: artifacts/bundle", "path: ../../.."))
    with pytest.raises(ValueError, match="bundle path '../../..' is invalid"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "content",
    [
        "flavors: {}\n",  # an MLflow model of another kind
        "{not yaml: [\n",  # garbled
        "- a list\n",  # not a mapping
    ],
)
def test_a_directory_that_is_not_a_lifecycle_model_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "MLmodel").write_text(content)
    with pytest.raises(ValueError, match="not a lifecycle model"):
        load_bundle(tmp_path)


def test_an_unknown_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a bundle nor an MLflow model"):
        load_bundle(tmp_path)
