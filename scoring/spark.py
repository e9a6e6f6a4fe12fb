"""Batch scoring on Spark: features from the definition in Spark SQL, then the model.

:func:`score_spark` builds features with :func:`features.spark_engine.build_features_spark`
(the model's own definition) and scores them with a pandas UDF (``mapInPandas``) over
:meth:`scoring.bundle.ModelBundle.predict_features`, the code the MLflow pyfunc runs. The
bundle reaches the executors as its files (JSON and LightGBM text, shipped with
``SparkContext.addFile``) and is read there with :meth:`ModelBundle.load`: nothing is
pickled, as on every load path of the model (docs/models.md).

The same artifact also works with ``mlflow.pyfunc.spark_udf`` on a frame of features
(see ``docs/spark.md``); the UDF here avoids MLflow's per-executor environment set-up.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from customer_lifecycle.features.contract import CUSTOMER_ID
from customer_lifecycle.features.mapping import EventMapping
from customer_lifecycle.features.spark_engine import (
    build_features_spark,
    check_spark_paths,
    load_events_spark,
    spark_session,
    write_parquet_atomic,
)
from customer_lifecycle.features.summary import LoadSummary
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.scoring.pyfunc import load_bundle

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_BUNDLE_DIR = "lifecycle-bundle"


def score_spark(
    events_df: DataFrame, *, bundle: ModelBundle, as_of: object, bundle_dir: str | Path
) -> DataFrame:
    """Scores of every customer with an event before ``as_of``, as a Spark DataFrame.

    ``bundle_dir`` is where ``bundle`` was saved; it is shipped to the executors. Columns:
    ``customer_id, stage, churn_probability, churn_risk, p_<stage>...``.
    """
    from pyspark import SparkFiles

    spark = events_df.sparkSession
    spark.sparkContext.addFile(str(bundle_dir), recursive=True)
    name = Path(bundle_dir).name
    feats = build_features_spark(events_df, as_of=as_of, definition=bundle.definition)
    schema = ", ".join(
        [f"`{CUSTOMER_ID}` string", "stage string", "churn_probability double"]
        + ["churn_risk string"]
        + [f"`p_{s}` double" for s in bundle.stages]
    )

    def predict(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = ModelBundle.load(SparkFiles.get(name))
        for frame in frames:
            if len(frame):
                yield model.predict_features(frame)

    return feats.mapInPandas(predict, schema=schema)


def score_parquet(
    events: str | Path,
    *,
    model: str | Path,
    as_of: object,
    out: str | Path,
    mapping: EventMapping | None = None,
    master: str = "local[*]",
    unknown_events: str = "strict",
    quarantine_path: str | Path | None = None,
) -> tuple[int, LoadSummary]:
    """Score an event log on Spark and write the scores as Parquet.

    ``events`` (CSV, JSON Lines or Parquet), ``mapping``, ``unknown_events`` and
    ``quarantine_path`` are those of :func:`features.spark_engine.load_events_spark`:
    bad rows are quarantined as a Parquet dataset with their row references. ``model``
    is any model reference :func:`scoring.pyfunc.load_bundle` takes (the registry is
    read on the driver). ``out`` is a Parquet directory, written atomically. Returns the
    number of customers scored and the load summary.
    """
    quarantine = check_spark_paths(events, out, quarantine_path)
    bundle = load_bundle(model)
    spark = spark_session(master)
    with tempfile.TemporaryDirectory(prefix="lifecycle-spark-") as tmp:
        # a name of its own: SparkContext.addFile refuses a second file under one name
        bundle_dir = bundle.save(Path(tmp) / f"{_BUNDLE_DIR}-{uuid.uuid4().hex}")
        clean, summary = load_events_spark(
            spark,
            events,
            mapping=mapping,
            unknown_events=unknown_events,
            quarantine_path=quarantine,
        )
        scores = score_spark(clean, bundle=bundle, as_of=as_of, bundle_dir=bundle_dir)
        write_parquet_atomic(scores, out)
    return spark.read.parquet(str(out)).count(), summary


__all__ = ["score_parquet", "score_spark"]
