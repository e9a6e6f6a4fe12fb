"""The Spark engine equals the in-memory engine, on a local Spark session.

Counts must agree exactly, other floats to 1e-9 relative, NaN in the same places; Spark
scores equal in-memory scores. Spark is slow to start and to plan, so there is one
session for the whole run and few hypothesis examples.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.validation import validate_events
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.simulator import write_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.features.test_engine_parity import CUSTOM, assert_same_features, event_logs

pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.slow,
    # PySpark 4 warns about pandas 3 on every conversion; the conversions here are checked
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
]

AS_OF = "2024-12-31"
STAGES = ("awareness", "consideration", "purchase", "retention")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from customer_lifecycle.features.spark_engine import spark_session

    session = spark_session("local[2]", app_name="lifecycle-tests")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("spark-sim")
    write_dataset(data, customers=250, seed=11, as_of=[AS_OF])
    return data / "events.parquet"


def _spark_frame(spark: object, events: pd.DataFrame) -> object:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("customer_id", T.StringType()),
            T.StructField("timestamp", T.TimestampType()),
            T.StructField("event_type", T.StringType()),
            *([T.StructField("amount", T.DoubleType())] if "amount" in events.columns else []),
        ]
    )
    columns = [
        events["customer_id"].astype(str).tolist(),
        [t.to_pydatetime() for t in events["timestamp"]],
        events["event_type"].astype(str).tolist(),
    ]
    if "amount" in events.columns:
        columns.append([float(a) for a in events["amount"]])
    return spark.createDataFrame(list(zip(*columns, strict=True)), schema=schema)  # type: ignore[attr-defined]


def _collect(frame: object) -> pd.DataFrame:
    table = frame.toPandas()  # type: ignore[attr-defined]
    return table.set_index("customer_id").sort_index().rename_axis("customer_id")


def test_simulated_log_matches_the_in_memory_engine(
    spark: object, simulated: Path, tmp_path: Path
) -> None:
    # through `lifecycle features --engine spark`: Parquet in, Spark SQL, Parquet out
    out = tmp_path / "features.parquet"
    args = ["features", "--events", str(simulated), "--as-of", AS_OF, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--engine", "spark"])
    assert result.exit_code == 0, result.output
    events, _ = load_events(simulated)
    got = pd.read_parquet(out).set_index("customer_id").sort_index()
    assert_same_features(got, build_features(events, as_of=AS_OF))


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log=event_logs(),
    # the shipped definition, and one with overlapping groups and uncounted windows
    definition=st.sampled_from([load_definition(), CUSTOM]),
)
def test_random_logs_match_the_in_memory_engine(
    spark: object, log: tuple[pd.DataFrame, pd.Timestamp], definition: FeatureDefinition
) -> None:
    from customer_lifecycle.features.spark_engine import build_features_spark

    events, as_of = log
    expected = build_features(events, as_of=as_of, definition=definition)
    got = _collect(
        build_features_spark(_spark_frame(spark, events), as_of=as_of, definition=definition)
    )
    if len(expected) == 0:
        assert len(got) == 0
        return
    assert_same_features(got, expected)


def test_bad_rows_are_dropped_for_the_same_reasons(spark: object) -> None:
    from customer_lifecycle.features.spark_engine import clean_events_spark

    rows = pd.DataFrame(
        {
            "customer_id": ["a", "", "b", "c", "d", "e", "f"],
            "timestamp": ["2024-01-01T00:00:00Z"] * 2
            + ["soon", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00+02:00"]
            + ["2024-01-04T00:00:00Z"] * 2,
            "event_type": ["page_view", "login", "purchase", "purchase", "teleport", "refund", ""],
            "amount": ["", "", "3", "-2", "", "-4.5", "n/a"],
        }
    )
    _, quarantine, _ = validate_events(rows)
    clean, bad = clean_events_spark(spark.createDataFrame(rows))  # type: ignore[attr-defined]
    got = bad.toPandas().sort_values("customer_id")
    assert sorted(got["reason"]) == sorted(quarantine["reason"])
    kept = clean.toPandas()
    assert sorted(kept["customer_id"]) == ["a", "e"]
    assert kept.set_index("customer_id").loc["e", "amount"] == 4.5  # refunds as magnitudes


def test_amounts_too_large_to_add_up_are_dropped_as_in_memory(spark: object) -> None:
    from customer_lifecycle.features.spark_engine import clean_events_spark

    rows = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "timestamp": ["2024-01-01T00:00:00Z"] * 4,
            "event_type": ["purchase", "purchase", "refund", "purchase"],
            "amount": ["1.7e308", "1.7e308", "-2e15", "1e15"],
        }
    )
    _, quarantine, _ = validate_events(rows)
    clean, bad = clean_events_spark(spark.createDataFrame(rows))  # type: ignore[attr-defined]
    assert sorted(bad.toPandas()["reason"]) == sorted(quarantine["reason"])
    assert set(quarantine["reason"]) == {"amount_out_of_range"}
    assert clean.toPandas()["customer_id"].tolist() == ["c"]


@pytest.fixture(scope="module")
def bundle(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelBundle, Path]:
    """Small heads on the simulated log's features with random labels; saved for Spark."""
    events, _ = load_events(simulated)
    X = build_features(events, as_of=AS_OF).to_numpy()
    rng = np.random.default_rng(1)
    params = {"verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5, "num_threads": 1}
    stage = lgb.train(
        {**params, "objective": "multiclass", "num_class": len(STAGES)},
        lgb.Dataset(X, rng.integers(0, len(STAGES), len(X))),
        num_boost_round=6,
    )
    churn = lgb.train(
        {**params, "objective": "binary"}, lgb.Dataset(X, rng.integers(0, 2, len(X))), 6
    )
    model = ModelBundle(load_definition(), STAGES, stage, churn)
    return model, model.save(tmp_path_factory.mktemp("spark-model") / "bundle")


def _assert_same_scores(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.sort_values("customer_id", ignore_index=True)
    assert list(got.columns) == list(expected.columns)
    assert got["customer_id"].tolist() == expected["customer_id"].tolist()
    assert got["stage"].tolist() == expected["stage"].tolist()
    assert got["churn_risk"].tolist() == expected["churn_risk"].tolist()
    floats = [c for c in expected.columns if c.startswith("p_")] + ["churn_probability"]
    np.testing.assert_allclose(got[floats], expected[floats], rtol=1e-9, atol=1e-12)


def test_spark_scores_equal_in_memory_scores(
    spark: object, simulated: Path, bundle: tuple[ModelBundle, Path], tmp_path: Path
) -> None:
    # through `lifecycle score --engine spark`: features in Spark SQL, the bundle's
    # predict_features in a pandas UDF, Parquet out
    model, model_dir = bundle
    out = tmp_path / "scores.parquet"
    args = ["score", "--events", str(simulated), "--model", str(model_dir), "--as-of", AS_OF]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--out", str(out), "--engine", "spark"])
    assert result.exit_code == 0, result.output
    events, _ = load_events(simulated)
    _assert_same_scores(pd.read_parquet(out), model.predict_events(events, as_of=AS_OF))

    result = runner.invoke(app, [*args, "--out", "scores.csv", "--engine", "spark"])
    assert result.exit_code == 2 and "Parquet only" in result.output


def test_spark_engine_refuses_what_it_cannot_do(simulated: Path, tmp_path: Path) -> None:
    # a score store is written by the single-machine path only
    args = ["score", "--events", str(simulated), "--model", "m", "--as-of", AS_OF]
    result = CliRunner().invoke(
        app,
        [*args, "--engine", "spark", "--out", str(tmp_path / "s.parquet"), "--store", "s.db"],
    )
    assert result.exit_code == 2
    assert "not supported with --engine spark" in result.output
