"""Spark scoring with a customer value model equals the in-memory path (local Spark session).

The bundle has everything a score can carry: a latent model with a stage forecast, the
BG/NBD and Gamma-Gamma baselines and both learned value heads (so the tree kernels run
on the executors). Every column must equal ``ModelBundle.predict_events`` (floats to
1e-9 relative), the value columns must be typed (text, not double) and the next
purchase dates counted from the scoring ``as_of``; the Parquet written by
``score_parquet`` must read back as the local ``score_file`` Parquet does.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.scoring.bundle import VALUE_COLUMNS, ModelBundle

from tests.features.test_spark_engine import spark  # noqa: F401  (the session fixture)
from tests.scoring.latent_support import AS_OF, LatentData, latent_bundle, simulated

pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
]

TEXT = ["customer_id", "stage", "churn_risk", "next_purchase_date", "value_tier"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> LatentData:
    return simulated(tmp_path_factory.mktemp("value-spark-sim"), customers=300, seed=17)


@pytest.fixture(scope="module")
def bundle(data: LatentData) -> ModelBundle:
    from customer_lifecycle.training.value import fit_value

    definition = load_definition()
    fit = fit_value(
        data.events,
        AS_OF,
        definition=definition,
        horizon_days=180,
        learned_heads=False,
        say=lambda _: None,
    )
    assert fit is not None and fit.model.gamma_gamma is not None
    # small log-link heads of our own, so that the learned path runs whatever the
    # held-out comparison of fit_value would have decided on so small a log
    own = latent_bundle(data).build_features(data.events, as_of=AS_OF)
    names = definition.feature_names()
    X = own[names].to_numpy(dtype=np.float64)
    count = own["purchase_days"].to_numpy(dtype=np.float64)
    params = {"verbose": -1, "num_threads": 1, "num_leaves": 7, "min_data_in_leaf": 10}
    heads = {
        head: lgb.train(
            {**params, "objective": objective}, lgb.Dataset(X, target, feature_name=names), 6
        )
        for head, objective, target in (
            ("purchases", "poisson", count),
            ("spend", "tweedie", 25.0 * count),
        )
    }
    return dataclasses.replace(
        latent_bundle(data),
        value=dataclasses.replace(fit.model, heads=("purchases", "spend")),
        value_purchases_booster=heads["purchases"],
        value_spend_booster=heads["spend"],
    )


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("customer_id", ignore_index=True)


def _assert_same_scores(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    got, expected = _sorted(got), _sorted(expected)
    for column in TEXT:
        # None and NaN are both "no date": compare as text with one spelling of missing
        left = got[column].astype(object).where(got[column].notna(), None).tolist()
        right = expected[column].astype(object).where(expected[column].notna(), None).tolist()
        assert left == right, column
    floats = [c for c in expected.columns if c not in TEXT]
    assert {"expected_purchases", "expected_spend", "churn_probability"} <= set(floats)
    np.testing.assert_allclose(
        got[floats].to_numpy(dtype=np.float64),
        expected[floats].to_numpy(dtype=np.float64),
        rtol=1e-9,
        atol=1e-12,
    )


def test_spark_value_scores_equal_local_scores_column_for_column(
    spark: object,  # noqa: F811
    data: LatentData,
    bundle: ModelBundle,
    tmp_path: Path,
) -> None:
    from customer_lifecycle.features.spark_engine import load_events_spark
    from customer_lifecycle.scoring.spark import score_spark

    bundle_dir = bundle.save(tmp_path / "value-spark-bundle")
    clean, _ = load_events_spark(spark, data.path)  # type: ignore[arg-type]
    frame = score_spark(clean, bundle=bundle, as_of=AS_OF, bundle_dir=bundle_dir)

    types = dict(frame.dtypes)
    assert [c for c, t in types.items() if t == "string"] == TEXT
    assert all(t == "double" for c, t in types.items() if c not in TEXT)
    assert list(frame.columns) == ["customer_id", *bundle.output_columns]
    assert list(frame.columns[-4:]) == list(VALUE_COLUMNS)

    got = frame.toPandas()
    expected = bundle.predict_events(data.events, as_of=AS_OF)
    _assert_same_scores(got, expected)

    # the dates are filled (from the scoring time, not left empty) and lie after it;
    # only customers who bought before AS_OF have one
    dates = got["next_purchase_date"].dropna()
    assert len(dates) >= 20
    assert (pd.to_datetime(dates) >= pd.Timestamp(AS_OF)).all()
    assert got["value_tier"].nunique() >= 3
    assert np.isfinite(got["expected_spend"]).all()


def test_spark_parquet_reads_back_like_the_local_parquet(
    spark: object,  # noqa: F811
    data: LatentData,
    bundle: ModelBundle,
    tmp_path: Path,
) -> None:
    from customer_lifecycle.scoring.batch import score_file
    from customer_lifecycle.scoring.spark import score_parquet

    model_dir = bundle.save(tmp_path / "model")
    n, _ = score_parquet(
        data.path,
        model=model_dir,
        as_of=AS_OF,
        out=tmp_path / "spark-scores.parquet",
        master="local[2]",
    )
    score_file(data.path, model=model_dir, as_of=AS_OF, out=tmp_path / "local.parquet")
    spark_scores = pd.read_parquet(tmp_path / "spark-scores.parquet")
    local_scores = pd.read_parquet(tmp_path / "local.parquet")
    assert n == len(local_scores) == len(spark_scores)
    for column in ("next_purchase_date", "value_tier"):
        # text in both files, the same text
        assert pd.api.types.is_string_dtype(spark_scores[column]), column
        assert pd.api.types.is_string_dtype(local_scores[column]), column
    _assert_same_scores(spark_scores, local_scores)
