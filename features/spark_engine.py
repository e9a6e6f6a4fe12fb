"""The Spark engine: the feature definition compiled to Spark SQL expressions.

See docs/features.md and docs/spark.md.

:func:`build_features_spark` turns a Spark DataFrame of events into one row of features
per customer, equal to :func:`features.engine.build_features` value for value: counts
exactly, floats to the last few bits (sums of amounts may be added in another order).
Nothing here is written per feature: every column comes from a loop over the
:class:`~features.definition.FeatureDefinition` (groups, windows, monetary groups, funnel
levels), under the names :meth:`~features.definition.FeatureDefinition.feature_names`
gives, so a changed definition changes both engines alike.

How the semantics are kept exactly:

* times are integer nanoseconds since the epoch (``unix_micros(timestamp) * 1000``), as
  in the in-memory engine, so window edges (``as_of - N days <= t < as_of``) compare
  integers and fractional days are one IEEE division, as in NumPy;
* UTC days are a floor division of integers (``pmod``), also before 1970;
* the last-event windows are anchored at each customer's last event before ``as_of``
  (a window function over the customer), the gaps between purchase days come from the
  sorted set of purchase days, and the population variance is ``E[g²] - E[g]²`` clipped
  at zero, exactly as the in-memory engine computes it;
* a value the in-memory engine leaves undefined is NaN here too, never null.

Spark is pulled in only when this module is imported; ``features`` does not need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
)
from customer_lifecycle.features.definition import ALL, DAY_NS, FeatureDefinition, load_definition
from customer_lifecycle.features.validation import MAX_AMOUNT

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

_NAN = float("nan")
#: Spellings of "no value" in amount cells, as features.events reads them.
_NULL_TOKENS = ("", "na", "n/a", "nan", "null", "none")


def spark_session(master: str = "local[*]", *, app_name: str = "lifecycle") -> SparkSession:
    """A Spark session for the lifecycle engines (``getOrCreate``: reuses a running one).

    Session time zone UTC (naive times are UTC, as in the event contract), Parquet
    nanosecond timestamps read as integers rather than refused, and on a ``local``
    master Python workers that run this interpreter.
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    if master.startswith("local"):
        # Python workers on this machine run this interpreter (and so see its packages);
        # PySpark reads only the variable. On a cluster, PYSPARK_PYTHON says which to run.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def build_features_spark(
    events_df: DataFrame,
    *,
    as_of: object,
    definition: FeatureDefinition | None = None,
) -> DataFrame:
    """Point-in-time features per customer, as Spark expressions of the definition.

    Parameters
    ----------
    events_df
        Events with ``customer_id``, ``timestamp`` and ``event_type`` (``amount``
        optional; a null or NaN amount is no amount). ``timestamp`` may be a Spark
        timestamp, integer nanoseconds since the epoch (Parquet nanosecond columns read
        with ``spark.sql.legacy.parquet.nanosAsLong``), or ISO 8601 text. Rows with a
        missing id, event type or time are ignored: check them first with
        :func:`clean_events_spark` to count and drop bad rows the way
        :func:`features.events.load_events` does.
    as_of
        The point in time (ISO 8601 or timestamp; naive means UTC); only events strictly
        before it are read.
    definition
        Feature definition; the shipped default when ``None``.

    Returns
    -------
    pyspark.sql.DataFrame
        ``customer_id`` then ``definition.feature_names()``, all ``double``, one row per
        customer with at least one event before ``as_of`` (in no particular order).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    d = definition or load_definition()
    cutoff = parse_as_of(as_of).as_unit("ns").value
    for col in (CUSTOMER_ID, TIMESTAMP, EVENT_TYPE):
        if col not in events_df.columns:
            raise ValueError(f"events are missing the required column {col!r}")

    amount = _number(AMOUNT) if AMOUNT in events_df.columns else F.lit(None).cast("double")
    ev = events_df.select(
        F.col(CUSTOMER_ID).cast("string").alias("cid"),
        _nanos(events_df, TIMESTAMP).alias("t"),
        F.col(EVENT_TYPE).cast("string").alias("et"),
        F.when(amount.isNull() | F.isnan(amount), None).otherwise(amount).alias("amount"),
    ).where(
        F.col("cid").isNotNull()
        & F.col("et").isNotNull()
        & F.col("t").isNotNull()
        & (F.col("t") < F.lit(cutoff))
    )
    day_ns = F.lit(DAY_NS)
    t, et = F.col("t"), F.col("et")
    level_of = {name: lv for lv, names in d.funnel_levels.items() for name in names}
    level = F.lit(0)
    for name, lv in level_of.items():
        level = F.when(et == name, F.lit(lv)).otherwise(level)
    ev = ev.select(
        "cid",
        "t",
        "et",
        "amount",
        (F.lit(cutoff) - t).alias("age"),
        # integer floor division (pmod is never negative), before 1970 too
        F.expr(f"(t - pmod(t, {DAY_NS})) div {DAY_NS}").alias("day"),
        level.alias("level"),
        # the customer's last event before as_of anchors the last-active windows
        (F.max(t).over(Window.partitionBy("cid")) - t).alias("back"),
    )
    age, back, day, amt = F.col("age"), F.col("back"), F.col("day"), F.col("amount")
    lvl = F.col("level")

    def member(group: str) -> Column:
        return F.lit(True) if group == ALL else et.isin(list(d.groups[group]))

    def within(span: Column, days: int) -> Column:
        return span <= F.lit(days * DAY_NS)

    def count(cond: Column) -> Column:
        return F.sum(F.when(cond, F.lit(1)).otherwise(F.lit(0)))

    purchase = member(d.purchase_group)
    aggs: dict[str, Column] = {}
    for g in d.group_names:
        for w in d.count_windows:
            aggs[f"n_{g}_{w}"] = count(member(g) & within(age, w))
        aggs[f"n_{g}"] = count(member(g))
        aggs[f"last_{g}"] = F.max(F.when(member(g), t))
        for w in d.last_active_windows_days:
            aggs[f"l_{g}_{w}"] = count(member(g) & within(back, w))
    for m in d.monetary_groups:
        has = member(m) & amt.isNotNull()
        for w in d.monetary_windows_days:
            aggs[f"sum_{m}_{w}"] = F.sum(F.when(has & within(age, w), amt))
        aggs[f"sum_{m}"] = F.sum(F.when(has, amt))
        aggs[f"with_{m}"] = count(has)
    for w in d.active_days_windows_days:
        aggs[f"days_{w}"] = F.count_distinct(F.when(within(age, w), day))
    aggs["days"] = F.count_distinct(day)
    aggs["funnel"] = F.max(lvl)
    for w in d.funnel_windows_days:
        aggs[f"funnel_{w}"] = F.max(F.when(within(age, w), lvl))
    for w in d.last_active_windows_days:
        aggs[f"lfunnel_{w}"] = F.max(F.when(within(back, w), lvl))
    by_type = d.event_types if d.last_active_by_event_type else ()
    for i, name in enumerate(by_type):
        for w in d.last_active_windows_days:
            aggs[f"ltype_{i}_{w}"] = count((et == name) & within(back, w))
    aggs["first"] = F.min(t)
    aggs["pdays"] = F.array_sort(F.collect_set(F.when(purchase, day)))
    aggs["first_p"] = F.min(F.when(purchase, t))
    # the first purchase of the latest purchase day: the least (-day, t) among purchases
    aggs["last_pday_first"] = F.min(F.when(purchase, F.struct((-day).alias("k"), t.alias("t"))))
    per = ev.groupBy("cid").agg(*[expr.alias(name) for name, expr in aggs.items()])

    c = F.col
    asof = F.lit(cutoff)

    def days_since(when: Column) -> Column:
        return _nan_if_null((asof - when) / day_ns)

    def zero_if_null(x: Column) -> Column:
        return F.coalesce(x, F.lit(0)).cast("double")

    out: dict[str, Column] = {}
    for g in d.group_names:
        for w in d.count_windows_days:
            out[f"count_{g}_{w}d"] = c(f"n_{g}_{w}").cast("double")
        out[f"count_{g}_all"] = c(f"n_{g}").cast("double")
        out[f"recency_{g}_days"] = days_since(c(f"last_{g}"))
    for m in d.monetary_groups:
        for w in d.monetary_windows_days:
            out[f"amount_{m}_sum_{w}d"] = zero_if_null(c(f"sum_{m}_{w}"))
        out[f"amount_{m}_sum_all"] = zero_if_null(c(f"sum_{m}"))
        out[f"amount_{m}_mean_all"] = _nan_if_null(
            F.when(c(f"with_{m}") > 0, c(f"sum_{m}") / c(f"with_{m}"))
        )
    r, b = d.trend_recent_days, d.trend_baseline_days
    for g in d.group_names:
        recent = c(f"n_{g}_{r}").cast("double")
        earlier = c(f"n_{g}_{b}") - c(f"n_{g}_{r}")
        out[f"trend_{g}"] = F.log((F.lit(1.0) + recent) / (F.lit(1.0) + earlier * (r / (b - r))))
    for w in d.active_days_windows_days:
        out[f"active_days_{w}d"] = c(f"days_{w}").cast("double")
    out["active_days_all"] = c("days").cast("double")
    out["funnel_depth_all"] = zero_if_null(c("funnel"))
    for w in d.funnel_windows_days:
        out[f"funnel_depth_{w}d"] = zero_if_null(c(f"funnel_{w}"))
    for g in d.groups:
        out[f"gap_{g}_days"] = _nan_if_null((c(f"last_{ALL}") - c(f"last_{g}")) / day_ns)
    for g in d.group_names:
        for w in d.last_active_windows_days:
            out[f"last_active_count_{g}_{w}d"] = c(f"l_{g}_{w}").cast("double")
    for w in d.last_active_windows_days:
        out[f"last_active_funnel_depth_{w}d"] = zero_if_null(c(f"lfunnel_{w}"))
    for i, name in enumerate(by_type):
        for w in d.last_active_windows_days:
            out[f"last_active_count_type_{name}_{w}d"] = c(f"ltype_{i}_{w}").cast("double")
    out["tenure_days"] = days_since(c("first"))

    pdays = c("pdays")
    n_days = F.size(pdays)
    n_gaps = (n_days - 1).cast("double")
    gaps = F.expr(
        "aggregate(sequence(1, greatest(size(pdays) - 1, 1)), "
        "named_struct('s', 0D, 'q', 0D), "
        "(acc, i) -> CASE WHEN i < size(pdays) THEN named_struct("
        "'s', acc.s + CAST(pdays[i] - pdays[i - 1] AS DOUBLE), "
        "'q', acc.q + CAST(pdays[i] - pdays[i - 1] AS DOUBLE) "
        "* CAST(pdays[i] - pdays[i - 1] AS DOUBLE)) ELSE acc END)"
    )
    has_gap = n_days > 1
    mean = F.when(has_gap, gaps["s"] / n_gaps)
    var = F.when(has_gap, gaps["q"] / n_gaps - mean * mean)
    since_purchase = (asof - c(f"last_{d.purchase_group}")) / day_ns
    out["purchase_days"] = n_days.cast("double")
    out["purchase_gap_mean_days"] = _nan_if_null(mean)
    # greatest() skips nulls: keep "no gap" NaN rather than a standard deviation of 0
    out["purchase_gap_std_days"] = _nan_if_null(
        F.when(var.isNotNull(), F.sqrt(F.greatest(var, F.lit(0.0))))
    )
    out["purchase_overdue_ratio"] = _nan_if_null(
        F.when(has_gap & (mean > 0), since_purchase / mean)
    )
    out["btyd_frequency"] = F.greatest(n_days - 1, F.lit(0)).cast("double")
    out["btyd_recency_days"] = _nan_if_null((c("last_pday_first")["t"] - c("first_p")) / day_ns)
    out["btyd_age_days"] = days_since(c("first_p"))

    names = d.feature_names()
    missing = [n for n in names if n not in out]
    if missing or len(out) != len(names):
        raise AssertionError(f"the Spark engine does not build {missing or sorted(out)}")
    return per.select(c("cid").alias(CUSTOMER_ID), *[out[n].cast("double").alias(n) for n in names])


def clean_events_spark(
    events_df: DataFrame, *, unknown_events: str = "strict"
) -> tuple[DataFrame, DataFrame]:
    """The row checks of :func:`features.events.validate_events`, as Spark expressions.

    Returns the clean events (event types trimmed, refunds as magnitudes) and the bad
    rows with a ``reason`` column (the first failing check of
    :data:`features.validation.QUARANTINE_REASONS`; amounts beyond
    :data:`features.validation.MAX_AMOUNT` in magnitude are ``amount_out_of_range``, so
    the features of every clean row are finite).
    """
    from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
    from pyspark.sql import functions as F

    if unknown_events not in ("strict", "lenient"):
        raise ValueError(f"unknown_events must be 'strict' or 'lenient', got {unknown_events!r}")
    for col in (CUSTOMER_ID, TIMESTAMP, EVENT_TYPE):
        if col not in events_df.columns:
            raise ValueError(f"events have no required column {col!r}")
    cid = F.col(CUSTOMER_ID).cast("string")
    et = F.trim(F.col(EVENT_TYPE).cast("string"))
    amount = _number(AMOUNT) if AMOUNT in events_df.columns else None
    checks: list[tuple[str, Column]] = [
        ("missing_customer_id", cid.isNull() | (F.trim(cid) == "")),
        ("missing_event_type", et.isNull() | (et == "")),
        ("unparseable_timestamp", _nanos(events_df, TIMESTAMP).isNull()),
    ]
    if amount is not None:
        text = F.lower(F.trim(F.col(AMOUNT).cast("string")))
        absent = F.col(AMOUNT).isNull() | text.isin(list(_NULL_TOKENS))
        checks.append(("unparseable_amount", (~absent & amount.isNull()) | _infinite(amount)))
        checks.append(("amount_out_of_range", F.abs(amount) > F.lit(MAX_AMOUNT)))
        checks.append(("negative_purchase_amount", (et == "purchase") & (amount < 0)))
    if unknown_events == "strict":
        checks.append(("unknown_event_type", ~et.isin(list(CANONICAL_EVENT_TYPES))))
    reason: Column = F.lit(None).cast("string")
    for name, failed in reversed(checks):
        reason = F.when(F.coalesce(failed, F.lit(False)), F.lit(name)).otherwise(reason)
    tagged = events_df.withColumn("reason", reason)
    clean = tagged.where(F.col("reason").isNull()).drop("reason")
    clean = clean.withColumn(EVENT_TYPE, et).withColumn(CUSTOMER_ID, cid)
    if amount is not None:
        clean = clean.withColumn(AMOUNT, F.when(et == "refund", F.abs(amount)).otherwise(amount))
    return clean, tagged.where(F.col("reason").isNotNull())


def features_parquet(
    events: str | Path,
    *,
    as_of: object,
    out: str | Path,
    definition: FeatureDefinition | None = None,
    master: str = "local[*]",
    unknown_events: str = "strict",
) -> int:
    """Read a Parquet event log, build features on Spark, write them as Parquet.

    ``out`` is a Parquet directory (Spark writes one file per task). Bad rows are
    dropped and counted, not quarantined to a file. Returns the number of customers.
    """
    check_parquet_paths(events, out)
    spark = spark_session(master)
    raw = spark.read.parquet(str(events))
    clean, _ = clean_events_spark(raw, unknown_events=unknown_events)
    table = build_features_spark(clean, as_of=as_of, definition=definition)
    table.write.mode("overwrite").parquet(str(out))
    return spark.read.parquet(str(out)).count()


def check_parquet_paths(events: str | Path, out: str | Path) -> None:
    """Refuse, in one line, paths the Spark commands cannot read or write."""
    for label, path in (("--events", events), ("--out", out)):
        name = str(path).lower().rstrip("/")
        if not (
            name.endswith((".parquet", ".pq")) or (label == "--events" and Path(path).is_dir())
        ):
            raise ValueError(f"{label} {path}: the Spark engine reads and writes Parquet only")
    if not Path(events).exists() and "://" not in str(events):
        raise FileNotFoundError(f"events file {events} does not exist")


def _nanos(df: DataFrame, name: str) -> Column:
    """A timestamp column as integer nanoseconds since the epoch, UTC (null if unparseable)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = df.schema[name].dataType
    col = F.col(name)
    if isinstance(kind, T.LongType | T.IntegerType):
        return col.cast("long")  # nanosecond Parquet columns read as integers
    if isinstance(kind, T.TimestampType | T.TimestampNTZType):
        return F.unix_micros(col.cast("timestamp")) * F.lit(1000)
    if isinstance(kind, T.DateType):
        return F.unix_micros(col.cast("timestamp")) * F.lit(1000)
    return F.unix_micros(F.try_to_timestamp(col.cast("string"))) * F.lit(1000)


def _number(name: str) -> Column:
    """A column as ``double``; text that is not a number becomes null (even in ANSI mode)."""
    from pyspark.sql import functions as F

    return F.expr(f"try_cast(`{name}` AS DOUBLE)")


def _nan_if_null(x: Column) -> Column:
    from pyspark.sql import functions as F

    return F.coalesce(x.cast("double"), F.lit(_NAN))


def _infinite(x: Column) -> Column:
    from pyspark.sql import functions as F

    return F.abs(x) == F.lit(float("inf"))


__all__: list[Any] = [
    "build_features_spark",
    "check_parquet_paths",
    "clean_events_spark",
    "features_parquet",
    "spark_session",
]
