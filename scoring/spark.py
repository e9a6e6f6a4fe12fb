"""Batch scoring on Spark: features from the definition in Spark SQL, then the model.

:func:`score_spark` builds features with :func:`features.spark_engine.build_features_spark`
(the model's own definition); when the model has a latent model, its columns are
computed per customer by the same :class:`features.latent.LatentFilter` the local path
runs (:func:`latent_features_spark`: each customer's events gathered into arrays, the
filter run on a batch of whole customers in a pandas UDF) and joined on
``customer_id``. The features are then scored with a pandas UDF (``mapInPandas``) over
:meth:`scoring.bundle.ModelBundle.predict_features`, the code the MLflow pyfunc runs. The
bundle reaches the executors as its files (JSON and LightGBM text, shipped with
``SparkContext.addFile``) and is read there with :meth:`ModelBundle.load`: nothing is
pickled, as on every load path of the model (docs/models.md).

The same artifact also works with ``mlflow.pyfunc.spark_udf`` on a frame of features
(see ``docs/spark.md``); the UDF here avoids MLflow's per-executor environment set-up.
"""

from __future__ import annotations

import functools
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
)
from customer_lifecycle.features.latent import LatentFilter, LatentParams
from customer_lifecycle.features.mapping import EventMapping
from customer_lifecycle.features.spark_engine import (
    _nanos,
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


@functools.lru_cache(maxsize=4)
def _latent_filter(params_json: str, horizon_days: int) -> LatentFilter:
    """One filter per model and executor process (its tables cost a few milliseconds)."""
    return LatentFilter(LatentParams.from_dict(json.loads(params_json)), horizon_days=horizon_days)


def latent_features_spark(
    events_df: DataFrame, *, latent: LatentFilter, as_of: object
) -> DataFrame:
    """The latent columns of every customer with an event before ``as_of``, on Spark.

    Parameters
    ----------
    events_df
        Events with ``customer_id``, ``timestamp`` and ``event_type`` (the timestamp
        forms of :func:`features.spark_engine.build_features_spark`); rows with a missing
        id, type or time are ignored, as there.
    latent
        The filter; its parameters travel to the executors as JSON text.
    as_of
        The point in time; only events strictly before it are read.

    Returns
    -------
    pyspark.sql.DataFrame
        ``customer_id`` then ``latent.feature_names``, all ``double``, one row per
        customer (in no particular order): the values of
        :meth:`features.latent.LatentFilter.matrix` on the customer's events.
    """
    from pyspark.sql import functions as F

    cutoff = int(parse_as_of(as_of).as_unit("ns").value)
    for col in (CUSTOMER_ID, TIMESTAMP, EVENT_TYPE):
        if col not in events_df.columns:
            raise ValueError(f"events are missing the required column {col!r}")
    params_json = json.dumps(latent.params.to_dict())
    horizon = latent.horizon_days
    names = latent.feature_names
    ev = events_df.select(
        F.col(CUSTOMER_ID).cast("string").alias("cid"),
        _nanos(events_df, TIMESTAMP).alias("t"),
        F.col(EVENT_TYPE).cast("string").alias("et"),
    ).where(
        F.col("cid").isNotNull()
        & F.col("et").isNotNull()
        & F.col("t").isNotNull()
        & (F.col("t") < F.lit(cutoff))
    )
    # Each customer's events become two arrays in one row, so that a batch of the UDF
    # holds whole customers and the filter runs once per batch, not once per customer.
    # One list of (t, et) pairs, then its two fields: two lists would not be aligned.
    grouped = (
        ev.groupBy("cid")
        .agg(F.collect_list(F.struct("t", "et")).alias("ev"))
        .select("cid", F.col("ev.t").alias("t"), F.col("ev.et").alias("et"))
    )
    schema = ", ".join([f"`{CUSTOMER_ID}` string", *[f"`{n}` double" for n in names]])

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        filt = _latent_filter(params_json, horizon)
        for frame in frames:
            n = len(frame)
            if not n:
                continue
            counts = frame["t"].map(len).to_numpy(dtype=np.int64)
            t_ns = np.concatenate([np.asarray(x, dtype=np.int64) for x in frame["t"]])
            types = np.concatenate([np.asarray(x, dtype=object) for x in frame["et"]])
            codes, type_names = pd.factorize(types, sort=True)
            values = filt.matrix(
                np.repeat(np.arange(n, dtype=np.int64), counts),
                t_ns,
                codes,
                n_customers=n,
                type_names=[str(x) for x in type_names],
                as_of_ns=cutoff,
            )
            out = pd.DataFrame(values, columns=names)
            out.insert(0, CUSTOMER_ID, frame["cid"].astype(str).to_numpy())
            yield out

    return grouped.mapInPandas(run, schema=schema)


#: Score columns that are text (every other column after ``customer_id`` is double).
_TEXT_COLUMNS = frozenset({"stage", "churn_risk", "next_purchase_date", "value_tier"})


def score_schema(bundle: ModelBundle) -> str:
    """The Spark DDL schema of :func:`score_spark`'s output for ``bundle``.

    Parameters
    ----------
    bundle
        The model; its :attr:`~scoring.bundle.ModelBundle.output_columns` are typed.

    Returns
    -------
    str
        ``customer_id`` then every output column: the stage, the risk band, the next
        purchase date (``YYYY-MM-DD``, as the local scores write it) and the value tier
        as ``string``, all others ``double``.
    """
    columns = [CUSTOMER_ID, *bundle.output_columns]
    return ", ".join(
        f"`{c}` {'string' if c == CUSTOMER_ID or c in _TEXT_COLUMNS else 'double'}" for c in columns
    )


def score_spark(
    events_df: DataFrame, *, bundle: ModelBundle, as_of: object, bundle_dir: str | Path
) -> DataFrame:
    """Scores of every customer with an event before ``as_of``, as a Spark DataFrame.

    Parameters
    ----------
    events_df
        Clean events (as :func:`features.spark_engine.load_events_spark` returns them).
    bundle
        The model.
    as_of
        The scoring time: features are built from events strictly before it, and a
        value model's ``next_purchase_date`` counts from it.
    bundle_dir
        Where ``bundle`` was saved; it is shipped to the executors.

    Returns
    -------
    pyspark.sql.DataFrame
        :func:`score_schema` columns: ``customer_id, stage, churn_probability,
        churn_risk, p_<stage>...``, when the bundle has a stage forecast
        ``p_next_<stage>...`` and, when it has a value model, ``expected_purchases``,
        ``expected_spend`` (double), ``next_purchase_date`` (string ``YYYY-MM-DD``
        or null) and ``value_tier`` (string), the values
        :meth:`scoring.bundle.ModelBundle.predict_features` gives at ``as_of``.
    """
    from pyspark import SparkFiles

    spark = events_df.sparkSession
    spark.sparkContext.addFile(str(bundle_dir), recursive=True)
    name = Path(bundle_dir).name
    # the executors get the instant as UTC nanoseconds: exact, and parsed only here
    cutoff_ns = int(parse_as_of(as_of).value)
    feats = build_features_spark(events_df, as_of=as_of, definition=bundle.definition)
    if bundle.latent_filter is not None:
        latent = latent_features_spark(events_df, latent=bundle.latent_filter, as_of=as_of)
        # both have a row for exactly the customers with an event before as_of
        feats = feats.join(latent, on=CUSTOMER_ID, how="left")

    def predict(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = ModelBundle.load(SparkFiles.get(name))
        cutoff = pd.Timestamp(cutoff_ns, tz="UTC")
        for frame in frames:
            if len(frame):
                yield model.predict_features(frame, as_of=cutoff)

    return feats.mapInPandas(predict, schema=score_schema(bundle))


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


__all__ = ["latent_features_spark", "score_parquet", "score_schema", "score_spark"]
