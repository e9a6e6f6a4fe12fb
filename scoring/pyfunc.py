"""The MLflow pyfunc of a model bundle (models-from-code: no pickle on the load path).

MLflow stores ``scoring/model_code.py`` with the model; loading runs that short file,
which imports this installed module, and :meth:`LifecycleModel.load_context` reads the
bundle's JSON and LightGBM text files. The input is a frame of precomputed features
(``customer_id`` optional); the output has the ``lifecycle score`` columns.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, ModelBundle
from mlflow.pyfunc import PythonModel

BUNDLE_ARTIFACT = "bundle"
MODEL_CODE = Path(__file__).with_name("model_code.py")
#: The pyfunc's one inference parameter: the time the features were built at (ISO 8601),
#: which dates ``next_purchase_date``; empty by default.
AS_OF_PARAM = "as_of"


class LifecycleModel(PythonModel):
    """Stage and churn scores from feature vectors, for MLflow serving and Spark UDFs."""

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.bundle is None:
            raise RuntimeError("the model bundle is not loaded")
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        # the features were built at some as_of the frame does not carry: a caller who
        # passes it gets next_purchase_date, others get it empty
        as_of = (params or {}).get(AS_OF_PARAM) or None
        return self.bundle.predict_features(model_input, as_of=as_of)


def bundle_of(pyfunc_model: Any) -> ModelBundle:
    """The :class:`ModelBundle` inside a loaded ``mlflow.pyfunc`` model."""
    inner = pyfunc_model.unwrap_python_model()
    if not isinstance(inner, LifecycleModel) or inner.bundle is None:
        raise ValueError("this MLflow model is not a lifecycle model")
    return inner.bundle


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``mlflow.db`` here."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def load_bundle(model: str | Path) -> ModelBundle:
    """Load a model from a bundle directory, an MLflow model directory, or an MLflow URI.

    ``models:/NAME@champion``, ``models:/NAME/3`` and ``runs:/...`` are resolved against
    :func:`default_tracking_uri`. Every reference is read as data: the model's files are
    downloaded into a private temporary directory (the artifact store is only read), its
    ``MLmodel`` is parsed as YAML to find the bundle, and the bundle's JSON and LightGBM
    text files are read. Nothing stored with the model is imported or executed, unlike
    ``mlflow.pyfunc.load_model``, which runs the model's code file.
    """
    path = Path(str(model))
    if (path / BUNDLE_FILE).is_file():
        return ModelBundle.load(path)
    if path.is_dir():
        return ModelBundle.load(_bundle_dir(path, str(model)))
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(default_tracking_uri())
    with tempfile.TemporaryDirectory(prefix="lifecycle-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=str(model), dst_path=tmp)
        except MlflowException as exc:
            raise ValueError(f"cannot load model {model}: {exc.message.splitlines()[0]}") from None
        except OSError as exc:
            raise ValueError(f"cannot load model {model}: {exc}") from None
        return ModelBundle.load(_bundle_dir(Path(local), str(model)))


def _bundle_dir(model_dir: Path, label: str) -> Path:
    """The bundle directory of an MLflow model directory, found from its ``MLmodel`` file."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"cannot load model {label}: it is neither a bundle nor an MLflow model")
    try:
        doc = yaml.safe_load(mlmodel.read_text())
        artifacts = doc["flavors"]["python_function"]["artifacts"]
        relative = artifacts[BUNDLE_ARTIFACT]["path"]
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(f"cannot load model {label}: it is not a lifecycle model") from None
    bundle = (model_dir / str(relative)).resolve()
    if not bundle.is_relative_to(model_dir.resolve()) or not bundle.is_dir():
        raise ValueError(f"cannot load model {label}: its bundle path {relative!r} is invalid")
    return bundle
