"""The model artifact and how it scores: shared by training (writes) and serving (reads).

:class:`scoring.bundle.ModelBundle` holds the feature definition and both heads in safe
formats (JSON and LightGBM text); :mod:`scoring.pyfunc` wraps it as an MLflow pyfunc.
"""
