"""Labels (docs/labels.md): CRM stage labels or the rulebook, and churn labels from the log."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from customer_lifecycle.features.config import read_yaml
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of, parse_timestamps
from customer_lifecycle.features.definition import DAY_NS, FeatureDefinition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.taxonomy import Taxonomy

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


def load_rulebook(
    path: str | Path | None = None, *, taxonomy: Taxonomy, definition: FeatureDefinition
) -> Rulebook:
    """Load a rulebook YAML (``None``: the shipped one), checked against the feature names."""
    data, source = read_yaml(
        path, package="customer_lifecycle.training.config", default="rulebook.yaml", what="rulebook"
    )
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ValueError(f"{source} must hold a 'rules' list and a 'default' stage")
    columns = set(definition.feature_names())
    rules = []
    for i, rule in enumerate(data["rules"]):
        if not isinstance(rule, dict) or "stage" not in rule:
            raise ValueError(f"{source}: rules[{i}] needs a 'stage'")
        conds = []
        for cond in rule.get("when") or []:
            if not (isinstance(cond, list) and len(cond) == 3 and cond[1] in _OPS):
                raise ValueError(
                    f"{source}: rules[{i}] condition {cond!r} must be [feature, op, number] "
                    f"with op one of {' '.join(_OPS)}"
                )
            if cond[0] not in columns:
                raise ValueError(f"{source}: rules[{i}] uses unknown feature {cond[0]!r}")
            conds.append((str(cond[0]), str(cond[1]), float(cond[2])))
        rules.append((taxonomy.normalise(rule["stage"]), tuple(conds)))
    default = taxonomy.normalise(str(data.get("default", taxonomy.stages[0])))
    return Rulebook(rules=tuple(rules), default=default)


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
