"""Models-from-code entry point that MLflow stores with each lifecycle model.

It only imports the installed ``scoring`` package; the estimators are read from the
bundle's JSON and LightGBM text files by ``LifecycleModel.load_context``.
"""

from mlflow.models import set_model

from scoring.pyfunc import LifecycleModel

set_model(LifecycleModel())
