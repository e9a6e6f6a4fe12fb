"""Point MLflow at a test's own tracking store, and put the previous one back after.

``mlflow.set_tracking_uri`` sets a process-wide URI (and the environment variable);
a fixture that leaves it pointing at its own store leaks that store into whatever
test runs next in the same process, which under pytest-xdist is any file's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import pytest


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """Use tracking store ``uri`` (global URI and ``MLFLOW_TRACKING_URI``) inside the block."""
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)  # sets the variable too: the context restores it
