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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from customer_lifecycle.features.contract import (
    AMOUNT,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    TIMESTAMP_PATTERN,
    parse_as_of,
)
from customer_lifecycle.features.definition import ALL, DAY_NS, FeatureDefinition, load_definition
from customer_lifecycle.features.mapping import (
    ColumnSource,
    EventMapping,
    FieldSource,
    refuse_lost_amounts,
)
from customer_lifecycle.features.paths import refuse_overlaps
from customer_lifecycle.features.summary import LoadSummary
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

    def member(group: str) -> Column:
        return F.lit(True) if group == ALL else et.isin(list(d.groups[group]))

    # integer floor division (pmod is never negative), before 1970 too
    day_of_t = F.expr(f"(t - pmod(t, {DAY_NS})) div {DAY_NS}")
    ev = ev.select(
        "cid",
        "t",
        "et",
        "amount",
        (F.lit(cutoff) - t).alias("age"),
        day_of_t.alias("day"),
        level.alias("level"),
        # the customer's last event before as_of anchors the last-active windows
        (F.max(t).over(Window.partitionBy("cid")) - t).alias("back"),
        # the first purchase day is BG/NBD's time 0: its spend is not repeat spend
        F.min(F.when(member(d.purchase_group), day_of_t))
        .over(Window.partitionBy("cid"))
        .alias("first_pday"),
    )
    age, back, day, amt = F.col("age"), F.col("back"), F.col("day"), F.col("amount")
    lvl = F.col("level")
    first_pday = F.col("first_pday")

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
    # spend of repeat purchase days; a day with no amount is no spend, not a spend of 0
    repeat_spend = purchase & amt.isNotNull() & (day > first_pday)
    aggs["repeat_sum"] = F.sum(F.when(repeat_spend, amt))
    aggs["repeat_days"] = F.count_distinct(F.when(repeat_spend, day))
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
    out["btyd_mean_spend"] = _nan_if_null(
        F.when(c("repeat_days") > 0, c("repeat_sum") / c("repeat_days"))
    )

    names = d.feature_names()
    missing = [n for n in names if n not in out]
    if missing or len(out) != len(names):
        raise AssertionError(f"the Spark engine does not build {missing or sorted(out)}")
    return per.select(c("cid").alias(CUSTOMER_ID), *[out[n].cast("double").alias(n) for n in names])


def clean_events_spark(
    events_df: DataFrame,
    *,
    mapping: EventMapping | None = None,
    unknown_events: str = "strict",
) -> tuple[DataFrame, DataFrame]:
    """The row checks of :func:`features.validation.validate_events`, as Spark expressions.

    Parameters
    ----------
    events_df
        Source rows under their source column names.
    mapping
        Column names, event names and time unit of the source
        (:class:`features.mapping.EventMapping`); ``None`` expects the contract's names.
    unknown_events
        ``"strict"`` or ``"lenient"``, as for :func:`features.events.load_events`.

    Returns
    -------
    clean : pyspark.sql.DataFrame
        The canonical events of the rows that passed: ``customer_id`` (text),
        ``timestamp`` (integer nanoseconds since the epoch, UTC), ``event_type`` (mapped,
        trimmed), then ``amount`` (refunds as magnitudes) and ``channel`` when the source
        has them.
    bad : pyspark.sql.DataFrame
        The failed rows, source columns and a ``reason``: the first failing check of
        :data:`features.validation.QUARANTINE_REASONS`, decided as ``validate_events``
        decides it.

    Raises
    ------
    ValueError
        On a bad ``unknown_events`` or a missing required column (named, with its source
        name when it came from ``mapping``).
    """
    from pyspark.sql import functions as F

    tagged = _tag_events(events_df, mapping=mapping, unknown_events=unknown_events)
    bad = tagged.where(F.col(_REASON).isNotNull())
    return _canonical(tagged), bad.drop(*_CANONICAL_FIELDS.values())


# Canonical values computed beside the source columns, under names no source uses.
_CANONICAL_FIELDS = {
    CUSTOMER_ID: "__lc_customer_id",
    TIMESTAMP: "__lc_timestamp",
    EVENT_TYPE: "__lc_event_type",
    AMOUNT: "__lc_amount",
    CHANNEL: "__lc_channel",
}
_REASON = "reason"
_FILE, _SPLIT, _ID = "__lc_file", "__lc_split", "__lc_id"
#: Columns of a quarantine dataset before the source columns: the row reference
#: (``source_file``, ``row_number``) and the reason.
QUARANTINE_KEY = ("source_file", "row_number", "reason")
#: Event file formats Spark reads, as :func:`features.readers.event_format` names them.
SPARK_FORMATS = ("csv", "jsonl", "parquet")
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _tag_events(
    events_df: DataFrame, *, mapping: EventMapping | None, unknown_events: str
) -> DataFrame:
    """Source columns, a ``reason`` (null when the row passes) and the canonical values."""
    from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
    from pyspark.sql import functions as F

    if unknown_events not in ("strict", "lenient"):
        raise ValueError(f"unknown_events must be 'strict' or 'lenient', got {unknown_events!r}")
    if _REASON in events_df.columns:
        events_df = events_df.withColumnRenamed(_REASON, f"{_REASON}_")
    source, _ = _source_columns(events_df, mapping)
    names = mapping.event_types if mapping else {}
    unit = mapping.timestamp_unit if mapping else None
    parsed = {
        CUSTOMER_ID: source[CUSTOMER_ID].cast("string"),
        TIMESTAMP: _times(events_df, source[TIMESTAMP], unit),
        EVENT_TYPE: _translate(F.trim(_as_text(events_df, source[EVENT_TYPE])), names),
    }
    if AMOUNT in source:
        amount, unparseable = _amount(events_df, source[AMOUNT])
        parsed[AMOUNT] = amount
        parsed[_AMOUNT_BAD] = unparseable
    if CHANNEL in source:
        channel = _as_text(events_df, source[CHANNEL])
        parsed[CHANNEL] = F.when(F.trim(channel) != "", channel)
    # parse once, then check the parsed columns: the checks refer to each value several
    # times, and inlining the parsing into every reference makes code Spark cannot compile
    parsed_df = events_df.select(
        "*", *[value.alias(_CANONICAL_FIELDS.get(c, c)) for c, value in parsed.items()]
    )
    cid, nanos, et = (F.col(_CANONICAL_FIELDS[c]) for c in (CUSTOMER_ID, TIMESTAMP, EVENT_TYPE))
    checks: list[tuple[str, Column]] = [
        ("missing_customer_id", cid.isNull() | (F.trim(cid) == "")),
        ("missing_event_type", et.isNull() | (et == "")),
        ("unparseable_timestamp", nanos.isNull()),
    ]
    replaced: dict[str, Column] = {}
    if AMOUNT in source:
        amount = F.col(_CANONICAL_FIELDS[AMOUNT])
        checks.append(("unparseable_amount", F.col(_AMOUNT_BAD)))
        checks.append(("amount_out_of_range", F.abs(amount) > F.lit(MAX_AMOUNT)))
        checks.append(("negative_purchase_amount", (et == "purchase") & (amount < 0)))
        # Refunds arrive as +x or -x depending on the source; store the magnitude.
        replaced[_CANONICAL_FIELDS[AMOUNT]] = F.when(et == "refund", F.abs(amount)).otherwise(
            amount
        )
    if unknown_events == "strict":
        checks.append(("unknown_event_type", ~et.isin(list(CANONICAL_EVENT_TYPES))))
    reason: Column = F.lit(None).cast("string")
    for name, failed in reversed(checks):  # the first failing check wins
        reason = F.when(F.coalesce(failed, F.lit(False)), F.lit(name)).otherwise(reason)
    tagged = parsed_df.withColumn(_REASON, reason)
    for name, value in replaced.items():
        tagged = tagged.withColumn(name, value)
    return tagged.drop(_AMOUNT_BAD) if AMOUNT in source else tagged


_AMOUNT_BAD = "__lc_amount_bad"


def _canonical(tagged: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    present = [c for c, field in _CANONICAL_FIELDS.items() if field in tagged.columns]
    return tagged.where(F.col(_REASON).isNull()).select(
        *[F.col(_CANONICAL_FIELDS[c]).alias(c) for c in present]
    )


def _source_columns(
    df: DataFrame, mapping: EventMapping | None
) -> tuple[dict[str, Column], dict[str, str]]:
    """Contract column -> the expression that reads it from the source, and the optional
    columns whose mapped source the data lacks (contract column -> source name).

    Sources resolve as :class:`features.mapping.FieldSource` says, with Spark column
    expressions: a column named by the whole text, else a field path into records
    (``ecommerce.purchase_revenue``), a key of a list of key/value records
    (``event_params[value]``, the value record coalesced), the first non-null of a
    ``first_of`` list.
    """
    from customer_lifecycle.features.contract import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    found = ", ".join(df.columns[:12]) + (", ..." if len(df.columns) > 12 else "")
    columns: dict[str, Column] = {}
    absent: dict[str, str] = {}
    for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        source = mapping.source(column) if mapping else None
        name = source.name if source else column
        col = _resolve_source(df, source) if source else _resolve(df, column)
        if col is not None:
            columns[column] = col
        elif column in REQUIRED_COLUMNS:
            if name != column:
                raise ValueError(
                    f"events have no column {name!r}, which the mapping names for {column!r} "
                    f"(columns found: {found})"
                )
            raise ValueError(f"events have no required column {column!r} (columns found: {found})")
        elif name != column:
            absent[column] = name
    return columns, absent


def _resolve_source(df: DataFrame, source: ColumnSource) -> Column | None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    found = [f for f in (_resolve_field(df, s) for s in source.first_of) if f is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0][0]
    if len({kind.simpleString() for _, kind in found}) > 1:
        found = [(_text_of(col, kind), T.StringType()) for col, kind in found]
    blank_as_null = [
        F.when(F.trim(col) != "", col) if isinstance(kind, T.StringType) else col
        for col, kind in found
    ]
    return F.coalesce(*blank_as_null)


def _resolve_field(df: DataFrame, source: FieldSource) -> tuple[Column, Any] | None:
    """One source's expression and Spark type; ``None`` when the data lacks it."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if source.text in df.columns:  # a column of that very name wins
        return F.col(_quote(source.text)), df.schema[source.text].dataType
    if source.column not in df.columns:
        return None
    walked = _walk(
        F.col(_quote(source.column)), df.schema[source.column].dataType, source.path, source
    )
    if walked is None or source.key is None:
        return walked
    col, kind = walked
    if not (isinstance(kind, T.ArrayType) and isinstance(kind.elementType, T.StructType)):
        where = ".".join((source.column, *source.path))
        raise ValueError(
            f"events: source {source.text!r} looks up a key in {where!r}, which is "
            f"{kind.simpleString()}, not a list of records"
        )
    if source.key_field not in kind.elementType.fieldNames():
        return None
    key_field, key = source.key_field, source.key
    hits = F.filter(col, lambda e: e[key_field].cast("string") == F.lit(key))
    entry = F.get(hits, 0)  # null when no entry has the key (or the list is null)
    walked = _walk(entry, kind.elementType, source.value_path, source)
    if walked is None:
        return None
    col, kind = walked
    if isinstance(kind, T.StructType):  # GA4's value record: the first field set
        if not kind.fields:
            return F.lit(None).cast("string"), T.StringType()
        kinds = {f.dataType.simpleString() for f in kind.fields}
        parts = [
            col[f.name] if len(kinds) == 1 else _text_of(col[f.name], f.dataType)
            for f in kind.fields
        ]
        return F.coalesce(*parts), kind.fields[0].dataType if len(kinds) == 1 else T.StringType()
    return col, kind


def _walk(
    col: Column, kind: Any, path: tuple[str, ...], source: FieldSource
) -> tuple[Column, Any] | None:
    """Follow ``path`` through nested records; ``None`` where a field does not exist."""
    from pyspark.sql import types as T

    for depth, name in enumerate(path):
        if not isinstance(kind, T.StructType):
            where = ".".join((source.column, *path[:depth])) if source.key is None else source.text
            raise ValueError(
                f"events: source {source.text!r} needs {where!r} to be a record with a field "
                f"{name!r}, but it is {kind.simpleString()}"
            )
        if name not in kind.fieldNames():
            return None
        col, kind = col[name], kind[name].dataType
    return col, kind


def _text_of(col: Column, kind: Any) -> Column:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(kind, T.StructType | T.ArrayType | T.MapType):
        return F.to_json(col)
    return col.cast("string")


def _resolve(df: DataFrame, name: str) -> Column | None:
    """A column of ``df`` by name (the contract's own names, when there is no mapping)."""
    from pyspark.sql import functions as F

    return F.col(_quote(name)) if name in df.columns else None


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _kind(df: DataFrame, col: Column) -> Any:
    return df.select(col).schema.fields[0].dataType


def _as_text(df: DataFrame, col: Column) -> Column:
    """A column as text; records and lists as JSON."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = _kind(df, col)
    if isinstance(kind, T.StructType | T.ArrayType | T.MapType):
        return F.to_json(col)
    return col.cast("string")


def _translate(et: Column, names: dict[str, str]) -> Column:
    """Source event names -> canonical ones; names left out pass through."""
    from pyspark.sql import functions as F

    if not names:
        return et
    out: Any = F
    for source, target in names.items():
        out = out.when(et == F.lit(source), F.lit(target))
    return out.otherwise(et)


def _times(df: DataFrame, col: Column, unit: str | None) -> Column:
    """UTC nanoseconds since the epoch (``long``), null where unparseable or missing."""
    from customer_lifecycle.features.mapping import TIMESTAMP_UNITS
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = _kind(df, col)
    if isinstance(kind, T.TimestampType | T.TimestampNTZType | T.DateType):
        return F.unix_micros(col.cast("timestamp")) * F.lit(1000)
    if unit is None:
        if isinstance(kind, T.LongType | T.IntegerType):
            return col.cast("long")  # nanosecond Parquet columns read as integers
        return _text_nanos(_as_text(df, col))
    scale = TIMESTAMP_UNITS[unit]
    limit = (2**63 - 1) // scale
    if isinstance(kind, T.IntegralType):
        whole = col.cast("decimal(20,0)")
    elif isinstance(kind, T.StringType):
        text = F.trim(col)
        # at most 19 digits: every such number fits the decimal, and those in range a long
        whole = F.when(text.rlike(r"^[+-]?\d{1,19}$"), text.cast("decimal(20,0)"))
    else:
        whole = F.lit(None).cast("decimal(20,0)")
    number, _ = _amount(df, col)
    ok = number.isNotNull() & (F.abs(number) < F.lit(float(limit)))
    fractional = F.when(ok, F.round(number * F.lit(float(scale))).cast("long"))
    in_range = whole.isNotNull() & (whole > F.lit(-limit)) & (whole < F.lit(limit))
    # whole numbers exactly; others (1.5 s) rounded to the nanosecond, as in memory
    exact = whole.cast("long") * F.lit(scale)
    return F.when(in_range, exact).when(whole.isNull(), fractional)


def _amount(df: DataFrame, col: Column) -> tuple[Column, Column]:
    """A number column as ``double`` (null where absent or bad) and the bad-cell mask.

    Numbers are numbers; text is a number when it reads as one (surrounding blanks
    allowed), absent when it is empty or a spelling of "no value", bad otherwise, and
    an infinite number is bad: the rules of :func:`features.validation.validate_events`.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = _kind(df, col)
    if isinstance(kind, T.NumericType | T.BooleanType):
        value = col.cast("double")
        return F.when(~F.isnan(value), value), _infinite(value)
    text = F.trim(_as_text(df, col))
    numeric = text.rlike(_NUMBER)
    absent = col.isNull() | F.lower(text).isin(list(_NULL_TOKENS))
    value = F.when(numeric, text.cast("double"))
    bad = (~numeric & ~absent) | F.coalesce(_infinite(value), F.lit(False))
    return F.when(~_infinite(value), value), bad


def load_events_spark(
    spark: SparkSession,
    path: str | Path,
    *,
    mapping: EventMapping | None = None,
    unknown_events: str = "strict",
    quarantine_path: str | Path | None = None,
) -> tuple[DataFrame, LoadSummary]:
    """Read an event log on Spark, check every row, quarantine the failures.

    The Spark counterpart of :func:`features.events.load_events`: the same formats
    (CSV, JSON Lines, Parquet; a file or a directory of them), the same mapping, the
    same checks and reasons. Failed rows are written, atomically, as a Parquet dataset
    (``source_file``, ``row_number``, ``reason``, then the source columns as text) when
    there is at least one.

    Parameters
    ----------
    spark
        The session (see :func:`spark_session`).
    path
        ``.csv`` / ``.csv.gz``, ``.jsonl`` / ``.ndjson``, ``.parquet`` / ``.pq``, or a
        directory (Parquet unless its name ends in one of the other endings), local or
        on any file system Spark reaches.
    mapping, unknown_events
        As for :func:`features.events.load_events`.
    quarantine_path
        A Parquet directory (``.parquet`` or ``.pq``); default
        :func:`default_spark_quarantine_path` of ``path``. Refused if it is, or lies in,
        the events.

    Returns
    -------
    events : pyspark.sql.DataFrame
        Canonical events (see :func:`clean_events_spark`); lazy, read again when used.
    summary : LoadSummary
        Rows read, kept and quarantined by reason, the quarantine's path.

    Raises
    ------
    ValueError
        One line: an unsupported name, a quarantine path that would overwrite the
        events, a missing column, a JSON line that is not a JSON object.
    FileNotFoundError
        A local ``path`` that does not exist.
    """
    from pyspark.sql import functions as F

    fmt = spark_event_format(path)
    target = quarantine_path if quarantine_path is not None else default_spark_quarantine_path(path)
    _check_parquet_name("--quarantine", target)
    refuse_overlaps([("the events", Path(str(path)))], [("the quarantine", Path(str(target)))])
    raw = _read(spark, str(path), fmt)
    for name in QUARANTINE_KEY:  # the quarantine's own columns come first
        if name in raw.columns:
            raw = raw.withColumnRenamed(name, f"{name}_")
    tagged = _tag_events(raw, mapping=mapping, unknown_events=unknown_events).select(
        "*",
        F.input_file_name().alias(_FILE),
        F.input_file_block_start().alias(_SPLIT),
        F.monotonically_increasing_id().alias(_ID),
    )
    tally = _tally(tagged, raw, unknown_events=unknown_events)
    splits, counts = tally.splits, tally.reasons
    if tally.corrupt:
        raise ValueError(f"events {path}: {tally.corrupt:,} lines are not JSON objects")
    rows = sum(n for n, _ in splits.values())
    bad = sum(counts.values())
    if rows == 0:
        raise ValueError(f"events {path} has no rows")
    absent = _source_columns(raw, mapping)[1]
    refuse_lost_amounts(
        mapping,
        purchases=tally.purchases,
        with_amount=tally.with_amount,
        missing=AMOUNT in absent or _CANONICAL_FIELDS[AMOUNT] not in tagged.columns,
        label=f"events {path}",
    )
    written: Path | None = None
    if bad:
        quarantine = _with_row_numbers(tagged.where(F.col(_REASON).isNotNull()), splits)
        source = [c for c in raw.columns if c != _CORRUPT]
        quarantine = quarantine.select(
            F.col(_FILE).alias("source_file"),
            "row_number",
            _REASON,
            *[_text_of(F.col(_quote(c)), raw.schema[c].dataType).alias(c) for c in source],
        )
        write_parquet_atomic(quarantine, target)
        written = Path(str(target))
    summary = LoadSummary(
        source=str(path),
        rows_read=rows,
        rows_kept=rows - bad,
        quarantined=counts,
        quarantine_path=written,
        unknown_event_types=tally.unknown,
        absent_columns=absent,
    )
    return _canonical(tagged), summary


_CORRUPT = "_corrupt_record"


def spark_event_format(path: str | Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` by name; a local directory without one is Parquet."""
    from customer_lifecycle.features.readers import EVENT_FORMATS

    name = str(path).lower().rstrip("/")
    for ext in sorted(EVENT_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            fmt = EVENT_FORMATS[ext]
            break
    else:
        fmt = "parquet" if "://" in name or Path(path).is_dir() else ""
    if "://" not in name and not Path(path).exists():
        raise FileNotFoundError(f"events file {path} does not exist")
    if fmt not in SPARK_FORMATS:
        raise ValueError(
            f"--events {path}: the Spark engine reads .csv, .csv.gz, .jsonl, .ndjson, "
            ".parquet or .pq (a file or a directory)"
        )
    return fmt


def default_spark_quarantine_path(events: str | Path) -> str:
    """``<name>.quarantine.parquet`` beside the events (``events.csv.gz`` ->
    ``events.quarantine.parquet``)."""
    from customer_lifecycle.features.readers import EVENT_FORMATS

    text = str(events).rstrip("/")
    for ext in sorted(EVENT_FORMATS, key=len, reverse=True):
        if text.lower().endswith(ext):
            text = text[: -len(ext)]
            break
    return f"{text}.quarantine.parquet"


def _read(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    reader = spark.read
    if fmt == "csv":
        # every cell as text, as the in-memory reader has it ("007" keeps its zeros)
        return reader.csv(path, header=True, inferSchema=False)
    if fmt == "jsonl":
        return reader.option("mode", "PERMISSIVE").json(path)
    return reader.parquet(path)


@dataclass
class _Tally:
    #: (file, split start) -> (rows, id of the first row)
    splits: dict[tuple[str, int], tuple[int, int]]
    #: quarantine reason -> rows, in the order of QUARANTINE_REASONS
    reasons: dict[str, int]
    #: event types outside the canonical list kept (lenient) -> rows
    unknown: dict[str, int]
    #: rows that are not JSON objects
    corrupt: int
    #: kept purchases, and those with an amount
    purchases: int
    with_amount: int


def _tally(tagged: DataFrame, raw: DataFrame, *, unknown_events: str) -> _Tally:
    """Everything the summary and the row references need, in one pass over the log."""
    from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
    from customer_lifecycle.features.validation import QUARANTINE_REASONS
    from pyspark.sql import functions as F

    et = F.col(_CANONICAL_FIELDS[EVENT_TYPE])
    unknown = (
        F.when(F.col(_REASON).isNull() & ~et.isin(list(CANONICAL_EVENT_TYPES)), et)
        if unknown_events == "lenient"
        else F.lit(None).cast("string")
    )
    corrupt = F.col(_CORRUPT).isNotNull() if _CORRUPT in raw.columns else F.lit(False)
    has_amount = (
        F.col(_CANONICAL_FIELDS[AMOUNT]).isNotNull()
        if _CANONICAL_FIELDS[AMOUNT] in tagged.columns
        else F.lit(False)
    )
    # 0: not a kept purchase, 1: a kept purchase without an amount, 2: with one
    purchase = F.when(F.col(_REASON).isNull() & (et == "purchase"), 1 + has_amount.cast("int"))
    rows = (
        tagged.groupBy(
            _FILE,
            _SPLIT,
            F.col(_REASON),
            unknown.alias("unknown"),
            corrupt.alias("corrupt"),
            F.coalesce(purchase, F.lit(0)).alias("purchase"),
        )
        .agg(F.count(F.lit(1)).alias("n"), F.min(_ID).alias("first"))
        .collect()
    )
    splits: dict[tuple[str, int], tuple[int, int]] = {}
    counts: dict[str, int] = {}
    kept_unknown: dict[str, int] = {}
    n_corrupt = purchases = with_amount = 0
    for r in rows:
        purchases += r["n"] if r["purchase"] else 0
        with_amount += r["n"] if r["purchase"] == 2 else 0
        key = (r[_FILE], r[_SPLIT])
        n, first = splits.get(key, (0, r["first"]))
        splits[key] = (n + r["n"], min(first, r["first"]))
        if r["corrupt"]:
            n_corrupt += r["n"]
        if r[_REASON] is not None:
            counts[r[_REASON]] = counts.get(r[_REASON], 0) + r["n"]
        elif r["unknown"] is not None:
            kept_unknown[r["unknown"]] = kept_unknown.get(r["unknown"], 0) + r["n"]
    ordered = {k: counts[k] for k in QUARANTINE_REASONS if k in counts}
    return _Tally(splits, ordered, kept_unknown, n_corrupt, purchases, with_amount)


def _with_row_numbers(rows: DataFrame, splits: dict[tuple[str, int], tuple[int, int]]) -> DataFrame:
    """``row_number``: the 1-based position of a row in its file.

    A file is read in splits (byte ranges); within a split rows come in file order with
    consecutive ids. The rows before a split are those of the file's earlier splits.
    """
    from pyspark.sql import functions as F

    offsets = []
    before: dict[str, int] = {}
    for (file, start), (n, first) in sorted(splits.items()):
        offsets.append((file, start, before.get(file, 0) - first))
        before[file] = before.get(file, 0) + n
    spark = rows.sparkSession
    table = spark.createDataFrame(offsets, f"{_FILE} string, {_SPLIT} long, __lc_offset long")
    joined = rows.join(F.broadcast(table), [_FILE, _SPLIT])
    return joined.withColumn("row_number", F.col(_ID) + F.col("__lc_offset") + F.lit(1))


def write_parquet_atomic(frame: DataFrame, path: str | Path) -> None:
    """Write ``frame`` as a Parquet directory at ``path``, complete or not at all.

    Spark writes into a hidden directory beside ``path``, which is renamed into place
    (any previous ``path`` is moved aside first and removed after), through the Hadoop
    file system of ``path``, so it works on every file system Spark writes to.
    """
    import uuid

    spark = frame.sparkSession
    jvm: Any = spark._jvm  # type: ignore[attr-defined]
    target = jvm.org.apache.hadoop.fs.Path(str(path))
    fs = target.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    parent, name = target.getParent(), target.getName()
    tmp = jvm.org.apache.hadoop.fs.Path(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    old = jvm.org.apache.hadoop.fs.Path(parent, f".{name}.old-{uuid.uuid4().hex}")
    try:
        frame.write.parquet(str(tmp.toString()))
        moved = fs.exists(target) and fs.rename(target, old)
        if not fs.rename(tmp, target):
            if moved:
                fs.rename(old, target)
            raise OSError(f"could not move the written dataset into place at {path}")
        if moved:
            fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


def features_spark(
    events: str | Path,
    *,
    as_of: object,
    out: str | Path,
    definition: FeatureDefinition | None = None,
    mapping: EventMapping | None = None,
    master: str = "local[*]",
    unknown_events: str = "strict",
    quarantine_path: str | Path | None = None,
) -> tuple[int, LoadSummary]:
    """Read an event log, build features on Spark, write them as Parquet.

    ``events``, ``mapping``, ``unknown_events`` and ``quarantine_path`` are those of
    :func:`load_events_spark`; ``out`` is a Parquet directory (one file per task),
    written atomically. Returns the number of customers and the load summary.
    """
    quarantine = check_spark_paths(events, out, quarantine_path)
    spark = spark_session(master)
    clean, summary = load_events_spark(
        spark, events, mapping=mapping, unknown_events=unknown_events, quarantine_path=quarantine
    )
    table = build_features_spark(clean, as_of=as_of, definition=definition)
    write_parquet_atomic(table, out)
    return spark.read.parquet(str(out)).count(), summary


def check_spark_paths(
    events: str | Path, out: str | Path, quarantine: str | Path | None = None
) -> str:
    """Refuse, in one line and before any work, paths the Spark commands cannot read or
    write, or outputs that would overwrite the events; returns the quarantine's path."""
    spark_event_format(events)
    _check_parquet_name("--out", out)
    target = str(quarantine) if quarantine is not None else default_spark_quarantine_path(events)
    _check_parquet_name("--quarantine", target)
    refuse_overlaps(
        [("the events", Path(str(events)))],
        [("--out", Path(str(out))), ("the quarantine", Path(target))],
    )
    return target


def _check_parquet_name(label: str, path: str | Path) -> None:
    if not str(path).lower().rstrip("/").endswith((".parquet", ".pq")):
        raise ValueError(f"{label} {path}: the Spark engine writes Parquet only (.parquet, .pq)")


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
    return _text_nanos(col.cast("string"))


def _text_nanos(text: Column) -> Column:
    """Time texts as UTC nanoseconds since the epoch, null unless a time of the contract.

    The in-memory loader's reading (features.validation): only texts of
    TIMESTAMP_PATTERN are times, to the nanosecond.

    Spark's own parser reads more than the contract ("2024", zone names, any year, blanks)
    and keeps microseconds only, so the text is checked against the contract's pattern
    first, then rewritten to one form, ``yyyy-MM-dd HH:mm:ss`` and an offset (``Z`` when
    it has none: naive times are UTC whatever the session's zone), parsed to whole
    seconds, and the fraction (up to nine digits) is added as an integer.
    """
    from pyspark.sql import functions as F

    time = F.when(text.rlike(_java_pattern(TIMESTAMP_PATTERN)), text)
    # the text matched the pattern, so these only pick it apart: date, hh:mm, :ss,
    # fraction, offset (whose sign cannot be confused with the date's dashes: it follows
    # a clock, and the date alone has no offset)
    date = F.substring(time, 1, 10)
    clock = F.regexp_extract(time, r"^.{11}([0-9:]{5,8})", 1)  # hh:mm or hh:mm:ss
    fraction = F.regexp_extract(time, r"\.([0-9]{1,9})", 1)
    offset = F.regexp_replace(
        F.regexp_extract(time, r"(Z|[+-][0-9]{2}:?[0-9]{2})\z", 1),
        r"^([+-][0-9]{2})([0-9]{2})\z",
        "$1:$2",
    )
    whole = F.concat(
        date,
        F.lit(" "),
        F.when(clock == "", F.lit("00:00:00")).otherwise(
            F.regexp_replace(clock, r"^([0-9]{2}:[0-9]{2})\z", "$1:00")
        ),
        F.when(offset == "", F.lit("Z")).otherwise(offset),
    )
    seconds = F.unix_seconds(F.try_to_timestamp(whole, F.lit("yyyy-MM-dd HH:mm:ssXXX")))
    nanos = F.rpad(fraction, 9, "0").cast("long")
    # the pattern's years keep every instant inside int64 nanoseconds; try_ arithmetic
    # makes sure a text that slipped through is null (quarantined), not a failed job
    return F.try_add(F.try_multiply(seconds, F.lit(1_000_000_000)), nanos)


def _java_pattern(pattern: str) -> str:
    """A full-text pattern (``^...$``) for Java's ``rlike``.

    Java's ``$``, like Python's, also matches before a final line break; ``\\z`` is the
    end of the text only.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"not a full-text pattern: {pattern!r}")
    return pattern[:-1] + r"\z"


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
    "QUARANTINE_KEY",
    "build_features_spark",
    "check_spark_paths",
    "clean_events_spark",
    "default_spark_quarantine_path",
    "features_spark",
    "load_events_spark",
    "spark_event_format",
    "spark_session",
    "write_parquet_atomic",
]
