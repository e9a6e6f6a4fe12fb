"""Spark scoring with a latent-stage model equals the in-memory path (local Spark session).

The latent columns are computed on the executors by the same filter, from each
customer's events gathered by Spark; scores, forecasts included, must equal
``ModelBundle.predict_events`` to 1e-9 relative.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.features.test_spark_engine import spark  # noqa: F401  (the session fixture)
from tests.scoring.latent_support import AS_OF, LatentData, latent_bundle, simulated

pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> LatentData:
    return simulated(tmp_path_factory.mktemp("latent-spark-sim"), customers=200, seed=13)


def test_spark_scores_with_latent_features_equal_local_scores(
    spark: object,  # noqa: F811
    data: LatentData,
    tmp_path: Path,
) -> None:
    from customer_lifecycle.features.spark_engine import load_events_spark
    from customer_lifecycle.scoring.spark import latent_features_spark, score_spark

    bundle = latent_bundle(data)
    bundle_dir = bundle.save(tmp_path / "latent-spark-bundle")
    clean, _ = load_events_spark(spark, data.path)  # type: ignore[arg-type]

    latent = latent_features_spark(clean, latent=bundle.latent_filter, as_of=AS_OF)  # type: ignore[arg-type]
    got_latent = latent.toPandas().set_index("customer_id").sort_index()
    local = bundle.build_features(data.events, as_of=AS_OF)
    names = bundle.latent_filter.feature_names  # type: ignore[union-attr]
    expected_latent = local[names].set_index(local.index.astype(str)).sort_index()
    assert got_latent.index.tolist() == expected_latent.index.tolist()
    np.testing.assert_allclose(got_latent[names], expected_latent, rtol=1e-9, atol=1e-12)

    scores = score_spark(clean, bundle=bundle, as_of=AS_OF, bundle_dir=bundle_dir).toPandas()
    expected = bundle.predict_events(data.events, as_of=AS_OF)
    scores = scores.sort_values("customer_id", ignore_index=True)
    expected = expected.sort_values("customer_id", ignore_index=True)
    assert list(scores.columns) == list(expected.columns)
    assert any(c.startswith("p_next_") for c in scores.columns)
    assert scores["customer_id"].tolist() == expected["customer_id"].tolist()
    assert scores["stage"].tolist() == expected["stage"].tolist()
    assert scores["churn_risk"].tolist() == expected["churn_risk"].tolist()
    floats = [c for c in expected.columns if c.startswith("p_")] + ["churn_probability"]
    np.testing.assert_allclose(scores[floats], expected[floats], rtol=1e-9, atol=1e-12)
