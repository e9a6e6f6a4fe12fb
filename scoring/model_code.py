"""Models-from-code entry point that MLflow stores with each lifecycle model.

It only imports the installed ``scoring`` package; the estimators are read from the
bundle's JSON and LightGBM text files by ``LifecycleModel.load_context``.
"""

from customer_lifecycle.scoring.pyfunc import LifecycleModel
from mlflow.models import set_model

set_model(LifecycleModel())
