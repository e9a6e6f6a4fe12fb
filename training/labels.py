"""Labels (docs/labels.md): CRM stage labels or the rulebook, and churn labels from the log."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of, parse_timestamps
from customer_lifecycle.features.definition import DAY_NS, FeatureDefinition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.messages import did_you_mean
from customer_lifecycle.features.taxonomy import Taxonomy
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def load_labels(path: str | Path, *, taxonomy: Taxonomy, as_of: object = None) -> pd.DataFrame:
    """Read a CRM label file: ``customer_id, stage`` and optionally ``as_of``.

    Stage names may be synonyms (mapped by ``taxonomy``). Without an ``as_of`` column
    every row takes ``as_of``. Several snapshots per customer are allowed; the same
    ``(customer_id, as_of)`` twice is refused.

    Returns
    -------
    pandas.DataFrame
        ``customer_id`` (str), ``stage`` (canonical name), ``as_of`` (UTC timestamp).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if raw.empty:
        raise ValueError(f"label file {path} has no rows")
    for col in (CUSTOMER_ID, "stage"):
        if col not in raw.columns:
            raise ValueError(f"label file {path} lacks the column {col!r}")
    ids = raw[CUSTOMER_ID].astype(str).str.strip()
    if (ids == "").any():
        row = int(np.flatnonzero((ids == "").to_numpy())[0]) + 1
        raise ValueError(f"label file {path} row {row}: customer_id is empty")
    names = raw["stage"].astype(str)
    lookup = {}
    for name in names.unique():
        try:
            lookup[name] = taxonomy.normalise(name)
        except ValueError as exc:
            row = int(np.flatnonzero((names == name).to_numpy())[0]) + 1
            raise ValueError(f"label file {path} row {row}: {exc}") from None
    if "as_of" in raw.columns:
        when = parse_timestamps(raw["as_of"].astype(str))
        if when.isna().any():
            row = int(np.flatnonzero(when.isna().to_numpy())[0]) + 1
            raise ValueError(f"label file {path} row {row}: as_of is not an ISO 8601 time")
    elif as_of is None:
        raise ValueError(f"label file {path} has no as_of column: pass --as-of")
    else:
        when = pd.Series(parse_as_of(as_of), index=raw.index).astype("datetime64[ns, UTC]")
    labels = pd.DataFrame(
        {CUSTOMER_ID: ids.to_numpy(), "stage": names.map(lookup).to_numpy(), "as_of": when}
    )
    dup = labels.duplicated([CUSTOMER_ID, "as_of"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0]) + 1
        raise ValueError(
            f"label file {path} row {row}: customer {labels[CUSTOMER_ID].iloc[row - 1]!r} "
            "has two labels at the same as_of"
        )
    return labels


@dataclass(frozen=True)
class Rulebook:
    """Ordered rules over feature columns that assign a stage; the first match wins."""

    rules: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...]
    default: str

    def apply(self, features: pd.DataFrame) -> np.ndarray:
        """The rulebook's stage for every row of ``features``."""
        stage = np.full(len(features), self.default, dtype=object)
        decided = np.zeros(len(features), dtype=bool)
        for name, conditions in self.rules:
            hit = ~decided
            for column, op, value in conditions:
                if column not in features.columns:
                    raise ValueError(f"rulebook: unknown feature column {column!r}")
                hit &= _OPS[op](features[column].to_numpy(dtype=np.float64), value)
            stage[hit] = name
            decided |= hit
        return stage

    def to_dict(self) -> dict[str, object]:
        return {
            "rules": [{"stage": s, "when": [list(c) for c in conds]} for s, conds in self.rules],
            "default": self.default,
        }


def _three_parts(value: Any) -> Any:
    if not (isinstance(value, list | tuple) and len(value) == 3):
        raise ValueError(f"must be [feature, op, number] with op one of {' '.join(_OPS)}")
    return value


def _known_feature(
    condition: tuple[str, str, float], info: ValidationInfo
) -> tuple[str, str, float]:
    columns = (info.context or {}).get("features")
    feature = condition[0]
    if columns is not None and feature not in columns:
        raise ValueError(f"names unknown feature {feature!r}{did_you_mean(feature, columns)}")
    return condition


def _known_stage(name: str, info: ValidationInfo) -> str:
    taxonomy: Taxonomy | None = (info.context or {}).get("taxonomy")
    if taxonomy is None:
        return name
    try:
        return taxonomy.normalise(name)
    except ValueError as exc:
        raise ValueError(f"names {exc}") from None


#: ``[feature, op, number]``: the feature column compared with a number.
Condition = Annotated[
    tuple[str, Literal["<", "<=", ">", ">=", "==", "!="], float],
    BeforeValidator(_three_parts),
    AfterValidator(_known_feature),
]
#: A stage name or synonym of the taxonomy, read as its canonical stage.
Stage = Annotated[str, AfterValidator(_known_stage)]


class Rule(ConfigModel):
    """One rule: the stage given when every condition holds."""

    stage: Stage
    when: list[Condition] = Field(default_factory=list)


class RulebookFile(ConfigModel):
    """The rulebook's YAML layout (``training/config/rulebook.yaml``).

    Validated with the context ``{"features": ..., "taxonomy": ...}``: the feature
    columns the conditions may name and the taxonomy the stages come from.
    """

    rules: list[Rule]
    default: Stage | None = None


def load_rulebook(
    path: str | Path | None = None, *, taxonomy: Taxonomy, definition: FeatureDefinition
) -> Rulebook:
    """Load a rulebook YAML (``None``: the shipped one), checked against the feature names.

    Raises
    ------
    ValueError
        One line naming the file, the rule and the problem: an unknown feature (with the
        closest name), an unknown stage, or a condition that is not ``[feature, op, number]``.
    """
    shipped = resources.files("customer_lifecycle.training.config") / "rulebook.yaml"
    context = {"features": definition.feature_names(), "taxonomy": taxonomy}
    spec, _ = load_config(RulebookFile, path, what="rulebook", default=shipped, context=context)
    return Rulebook(
        rules=tuple((rule.stage, tuple(rule.when)) for rule in spec.rules),
        default=spec.default or taxonomy.stages[0],
    )


def rulebook_for(
    path: str | Path | None, *, taxonomy: Taxonomy, definition: FeatureDefinition
) -> tuple[Rulebook | None, str]:
    """The rulebook of a run and what the run records about it, or ``None`` when it does not fit.

    A rulebook fits a taxonomy when every stage it names (in its rules and ``default``)
    is a stage or a synonym of the taxonomy; it need not name every stage. A rulebook
    given as ``path`` is meant for the run's taxonomy, so one that does not fit is an
    error (most likely a typo), as any other fault of the file. The shipped rulebook is
    written for the default taxonomy: with another taxonomy it is left out and the
    second value says why.

    Returns
    -------
    rulebook : Rulebook or None
        ``None`` when the shipped rulebook does not fit ``taxonomy``.
    note : str
        ``"rulebook FILE"``, ``"the shipped rulebook"``, or ``"skipped: <reason>"``.

    Raises
    ------
    ValueError
        One line, for a rulebook file that cannot be read or does not fit.
    """
    if path is not None:
        return load_rulebook(path, taxonomy=taxonomy, definition=definition), f"rulebook {path}"
    shipped = resources.files("customer_lifecycle.training.config") / "rulebook.yaml"
    context = {"features": definition.feature_names(), "taxonomy": None}
    spec, _ = load_config(RulebookFile, None, what="rulebook", default=shipped, context=context)
    named = [rule.stage for rule in spec.rules] + ([spec.default] if spec.default else [])
    lacking = list(dict.fromkeys(s for s in named if not taxonomy.knows(s)))
    if lacking:
        return None, (
            f"skipped: the shipped rulebook names stages the taxonomy lacks "
            f"({', '.join(lacking)}); pass --rulebook with rules for "
            f"{', '.join(taxonomy.stages)}"
        )
    return load_rulebook(None, taxonomy=taxonomy, definition=definition), "the shipped rulebook"


def churn_labels(
    events: pd.DataFrame,
    snapshots: pd.DataFrame,
    *,
    horizon_days: int,
    qualifying: str = "any",
    definition: FeatureDefinition,
) -> np.ndarray:
    """1 where a snapshot's customer has no qualifying event in ``[as_of, as_of + horizon)``.

    The counts come from the feature engine itself (events before ``as_of + horizon``
    minus events before ``as_of``), so the window follows the same strict-inequality
    rules as the features. ``qualifying`` is ``any`` (every event) or ``purchases``
    (the definition's purchase group).
    """
    if qualifying not in ("any", "purchases"):
        raise ValueError("qualifying activity must be 'any' or 'purchases'")
    if horizon_days <= 0:
        raise ValueError("the churn horizon must be a positive number of days")
    column = "count_all_all" if qualifying == "any" else f"count_{definition.purchase_group}_all"
    when = parse_timestamps(snapshots["as_of"])
    later = snapshots.assign(as_of=when + pd.Timedelta(days=horizon_days))
    before = build_features(events, snapshots=snapshots, definition=definition)[column]
    until = build_features(events, snapshots=later, definition=definition)[column]
    return (until.to_numpy() - before.to_numpy() == 0).astype(np.int8)


def check_horizon(events: pd.DataFrame, as_of: pd.Series, horizon_days: int) -> None:
    """Refuse snapshots whose churn window runs past the end of the log.

    The log is taken to cover every day up to the end of the UTC day of its last
    event; a window ending later would call customers churned for lack of data.
    """
    last = parse_timestamps(events["timestamp"]).max()
    if pd.isna(last):
        raise ValueError("the event log is empty")
    covered = pd.Timestamp((last.value // DAY_NS + 1) * DAY_NS, tz="UTC")
    latest = parse_timestamps(as_of).max()
    end = latest + pd.Timedelta(days=horizon_days)
    if end > covered:
        raise ValueError(
            f"the churn horizon runs past the data: the log ends on {covered.date()} but "
            f"as_of {latest.isoformat()} + {horizon_days} days is {end.date()}; "
            "use an earlier as_of or a shorter --horizon-days"
        )


def earlier_snapshots(keys: pd.DataFrame, *, count: int, step_days: int) -> pd.DataFrame:
    """Snapshots of the same customers before their labelled ones, for the churn head.

    For each customer, ``count`` snapshot times ``step_days`` apart going back from its
    earliest labelled ``as_of`` (the first is ``step_days`` before it). With
    ``step_days`` at least the churn horizon, each one's churn window closes by the
    customer's earliest label, so it sees nothing the labelled snapshots do not.

    Parameters
    ----------
    keys
        ``customer_id, as_of`` of the labelled snapshots.
    count
        Earlier snapshots per customer (0: none).
    step_days
        Days between consecutive snapshots.

    Returns
    -------
    pandas.DataFrame
        ``customer_id, as_of``, one row per customer and earlier time, ordered by time
        (latest first) and then as ``keys``.
    """
    if count < 0 or step_days <= 0:
        raise ValueError("earlier snapshots need a count >= 0 and a positive step in days")
    when = parse_timestamps(keys["as_of"])
    first = (
        pd.DataFrame({CUSTOMER_ID: keys[CUSTOMER_ID].astype(str).to_numpy(), "as_of": when})
        .groupby(CUSTOMER_ID, sort=False)["as_of"]
        .min()
    )
    parts = [
        pd.DataFrame(
            {
                CUSTOMER_ID: first.index.to_numpy(dtype=object),
                "as_of": (first - pd.Timedelta(days=k * step_days)).to_numpy(),
            }
        )
        for k in range(1, count + 1)
    ]
    if not parts:
        return pd.DataFrame(
            {CUSTOMER_ID: pd.Series(dtype=object), "as_of": pd.Series(dtype="datetime64[ns, UTC]")}
        )
    out = pd.concat(parts, ignore_index=True)
    out["as_of"] = out["as_of"].astype("datetime64[ns, UTC]")
    return out
