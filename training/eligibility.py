"""Is there enough data to train? The report of ``lifecycle check`` and the gate of ``train``.

Large predictive products state the data they need before they predict anything
(Klaviyo's predictive analytics: 500 customers who ordered, 180 days of orders;
Google Analytics 4's predictive metrics: 1,000 returning positive and 1,000 negative
users over 28 days). This product states its own minimums, chosen for its model
(docs/models.md#enough-data-to-train), as :class:`Minimums`:

* customers with an event before their snapshot;
* labelled examples of every stage of the taxonomy (the stage head);
* churned and not-churned examples (the churn head);
* a churn window (snapshot + horizon) that ends inside the log.

:func:`shortfalls` turns :class:`TrainingCounts` into the reasons a run is refused,
:func:`require_trainable` is the gate :func:`customer_lifecycle.training.train.train`
applies to its examples, and :func:`check_data` reads a log (and labels) into a
:class:`DataReport` with the same verdict, without writing anything.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
)
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.mapping import EventMapping, load_mapping
from customer_lifecycle.features.summary import LoadSummary
from customer_lifecycle.features.taxonomy import Taxonomy, load_taxonomy
from customer_lifecycle.training.labels import (
    check_horizon,
    churn_labels,
    load_labels,
    rulebook_for,
)
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DOCS = "docs/models.md#enough-data-to-train"


class Minimums(BaseSettings):
    """The least data a training run accepts; each field ``x`` is read from ``LIFECYCLE_MIN_X``.

    The defaults follow from the model (docs/models.md#enough-data-to-train): boosters
    that need 80 examples per leaf, a 20% validation part drawn at random by customer,
    fold boosters that train on 64% of the customers (5 folds of the other 80%), and
    macro-averaged metrics over every stage.
    """

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_MIN_", extra="ignore", frozen=True)

    customers: int = Field(
        default=200,
        ge=1,
        description="Distinct labelled customers with an event before their snapshot.",
    )
    stage_examples: int = Field(
        default=20,
        ge=1,
        description="Labelled examples (with history) of every stage of the taxonomy.",
    )
    churn_examples: int = Field(
        default=20,
        ge=1,
        description="Churned examples, and not-churned examples, each.",
    )


def load_minimums() -> Minimums:
    """The minimums from the environment, or one line naming the bad variable."""
    try:
        return Minimums()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LIFECYCLE_MIN_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ValueError(f"{name}: {first['msg']}") from None


@dataclass(frozen=True)
class TrainingCounts:
    """What a run would train on: labelled snapshots whose customer has history.

    ``churned`` and ``stayed`` are ``None`` when the churn window is not observable.
    """

    snapshots: int
    customers: int
    stages: dict[str, int]
    churned: int | None
    stayed: int | None

    @classmethod
    def of(
        cls,
        customer_ids: Sequence[str] | pd.Series | np.ndarray,
        stage_names: Sequence[str] | pd.Series | np.ndarray,
        churn: np.ndarray | None,
        *,
        stages: Sequence[str],
    ) -> TrainingCounts:
        """Count examples given per row: customer id, stage name, churn (1 = churned)."""
        ids = pd.Series(np.asarray(customer_ids, dtype=object))
        names = np.asarray(stage_names, dtype=object)
        churned = None if churn is None else int(np.asarray(churn).sum())
        return cls(
            snapshots=len(ids),
            customers=int(ids.nunique()),
            stages={s: int((names == s).sum()) for s in stages},
            churned=churned,
            stayed=None if churn is None else len(ids) - int(churned or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "customers": self.customers,
            "stages": dict(self.stages),
            "churned": self.churned,
            "not_churned": self.stayed,
        }


def shortfalls(counts: TrainingCounts, minimums: Minimums) -> list[str]:
    """Every minimum ``counts`` misses, each as a short clause naming the count and the need."""
    out = []
    if counts.customers < minimums.customers:
        out.append(
            f"{counts.customers:,} customers with events before their snapshot "
            f"(at least {minimums.customers:,} needed)"
        )
    for stage, n in counts.stages.items():
        if n < minimums.stage_examples:
            out.append(
                f"{n:,} examples of stage {stage!r} (at least {minimums.stage_examples:,} needed)"
            )
    for k, what in ((counts.churned, "churned"), (counts.stayed, "not-churned")):
        if k is not None and k < minimums.churn_examples:
            out.append(f"{k:,} {what} examples (at least {minimums.churn_examples:,} needed)")
    return out


class NotEnoughData(ValueError):
    """The data is readable but below a minimum: one line listing what is missing."""


def require_trainable(counts: TrainingCounts, minimums: Minimums | None = None) -> None:
    """Refuse to train below the minimums (from the environment when not given).

    Raises
    ------
    NotEnoughData
        ``not enough data to train: <every shortfall>; ...`` on one line.
    """
    missing = shortfalls(counts, minimums or load_minimums())
    if missing:
        raise NotEnoughData(f"not enough data to train: {'; '.join(missing)} ({DOCS})")


# -- the report of `lifecycle check` ----------------------------------------------------


@dataclass
class EventReport:
    """What the event log holds after the loader's checks."""

    load: LoadSummary
    customers: int
    first_event: pd.Timestamp | None
    last_event: pd.Timestamp | None
    event_types: dict[str, int]
    mapped_from: dict[str, list[str]]
    unknown_quarantined: dict[str, int]
    amounts: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        load = self.load.to_dict()
        load.pop("quarantine_path", None)  # the check writes nothing
        span = (
            None
            if self.first_event is None or self.last_event is None
            else (self.last_event - self.first_event).total_seconds() / 86400
        )
        return {
            **load,
            "customers": self.customers,
            "first_event": _iso(self.first_event),
            "last_event": _iso(self.last_event),
            "span_days": span,
            "event_types": dict(self.event_types),
            "mapped_from": {k: list(v) for k, v in self.mapped_from.items()},
            "unknown_event_types_quarantined": dict(self.unknown_quarantined),
            "amounts": {k: dict(v) for k, v in self.amounts.items()},
        }


@dataclass
class LabelReport:
    """The labelled snapshots, their stages and churn outcomes, and the churn window."""

    source: str
    horizon_days: int
    qualifying: str
    labelled: int
    stages_labelled: dict[str, int]
    unknown_stages: dict[str, int]
    per_snapshot: dict[str, dict[str, int | None]]
    window_end: pd.Timestamp
    horizon_problem: str | None
    counts: TrainingCounts

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "horizon_days": self.horizon_days,
            "qualifying": self.qualifying,
            "labelled_snapshots": self.labelled,
            "stages_labelled": dict(self.stages_labelled),
            "unknown_stages": dict(self.unknown_stages),
            "snapshots": {k: dict(v) for k, v in self.per_snapshot.items()},
            "churn_window_end": _iso(self.window_end),
            "churn_observable": self.horizon_problem is None,
            "training": self.counts.to_dict(),
        }


@dataclass
class DataReport:
    """Everything ``lifecycle check`` reports, and its verdict.

    ``reasons`` lists why the data is not enough to train (empty: eligible);
    ``warnings`` lists what does not stop training but deserves a look.
    """

    events: EventReport
    labels: LabelReport | None
    minimums: Minimums
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "eligible": self.eligible,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "minimums": self.minimums.model_dump(),
            "events": self.events.to_dict(),
            "labels": None if self.labels is None else self.labels.to_dict(),
        }

    def to_text(self) -> str:
        """The report as lines for a person; the last line is the verdict."""
        ev, load = self.events, self.events.load
        lines = [f"events: {load.source}"]
        quarantined = sum(load.quarantined.values())
        lines.append(
            f"  rows: {load.rows_read:,} read, {load.rows_kept:,} kept, {quarantined:,} quarantined"
        )
        for reason, n in sorted(load.quarantined.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason}: {n:,}")
            if reason == "unknown_event_type" and ev.unknown_quarantined:
                lines.append(f"      by name: {_counts(ev.unknown_quarantined)}")
        for column, source in load.absent_columns.items():
            lines.append(f"  no column {source!r} for {column}")
        lines.append(f"  customers: {ev.customers:,}")
        if ev.first_event is not None and ev.last_event is not None:
            days = (ev.last_event - ev.first_event).total_seconds() / 86400
            lines.append(
                f"  time span: {_iso(ev.first_event)} to {_iso(ev.last_event)} ({days:,.1f} days)"
            )
        lines.append("  events per type:")
        width = max((len(t) for t in ev.event_types), default=0)
        for name, n in ev.event_types.items():
            note = ""
            if name in load.unknown_event_types:
                note = "  unknown type, kept (lenient)"
            elif name in ev.mapped_from:
                note = f"  mapped from {', '.join(ev.mapped_from[name])}"
            lines.append(f"    {name:<{width}}  {n:>10,}{note}")
        for kind, a in ev.amounts.items():
            lines.append(
                f"  {kind} amounts: {int(a['rows']):,} rows, {int(a['with_amount']):,} with an "
                f"amount, total {a['total']:,.2f}"
            )
        if self.labels is not None:
            lines += _labels_text(self.labels)
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        m = self.minimums
        if self.eligible:
            lines.append(
                f"verdict: eligible to train (at least {m.customers:,} customers, "
                f"{m.stage_examples:,} examples per stage, {m.churn_examples:,} churned and "
                f"{m.churn_examples:,} not churned)"
            )
        else:
            lines.append(f"verdict: not eligible to train: {'; '.join(self.reasons)}")
        return "\n".join(lines)


def _labels_text(lab: LabelReport) -> list[str]:
    c = lab.counts
    lines = [
        f"labels: {lab.source}",
        f"  labelled snapshots: {lab.labelled:,}; with events before their as_of: "
        f"{c.snapshots:,} ({c.customers:,} customers)",
        "  stages (with history / labelled): "
        + ", ".join(f"{s} {n:,} / {lab.stages_labelled.get(s, 0):,}" for s, n in c.stages.items()),
    ]
    if lab.unknown_stages:
        lines.append(f"  unknown stages: {_counts(lab.unknown_stages)}")
    lines.append(
        f"  churn (no {'purchase' if lab.qualifying == 'purchases' else 'event'} in "
        f"{lab.horizon_days} days after as_of):"
    )
    for when, s in lab.per_snapshot.items():
        if s["churned"] is None:
            lines.append(f"    {when}: {s['snapshots']:,} snapshots, churn not observable")
        else:
            lines.append(
                f"    {when}: {s['snapshots']:,} snapshots, {s['churned']:,} churned, "
                f"{s['not_churned']:,} not churned"
            )
    window = "inside the log" if lab.horizon_problem is None else "past the end of the log"
    lines.append(f"  churn window ends {_iso(lab.window_end)}: {window}")
    return lines


def check_data(
    events_path: str | Path,
    *,
    mapping: str | None = None,
    labels_path: str | Path | None = None,
    as_of: object = None,
    horizon_days: int = 90,
    qualifying: str = "any",
    unknown_events: str = "strict",
    taxonomy_path: str | Path | None = None,
    definition_path: str | Path | None = None,
    rulebook_path: str | Path | None = None,
    minimums: Minimums | None = None,
) -> DataReport:
    """Read an event log (and labels) as ``train`` would, and judge whether it is enough.

    Nothing is written: quarantined rows are counted (and unknown event names listed)
    but not kept. Labels come from ``labels_path`` (``as_of`` for a file without an
    ``as_of`` column) or, without a file, from the rulebook at ``as_of``; with neither,
    only the events are reported and the verdict says a snapshot is needed.

    Raises
    ------
    ValueError
        One line, for input that cannot be read (a missing file or column, a bad time,
        a bad mapping, taxonomy or setting); data that can be read never raises.
    """
    if qualifying not in ("any", "purchases"):
        raise ValueError("--qualifying must be any or purchases")
    if unknown_events not in ("strict", "lenient"):
        raise ValueError("--unknown-events must be strict or lenient")
    if horizon_days <= 0:
        raise ValueError("the churn horizon must be a positive number of days")
    minimums = minimums or load_minimums()
    # a bad time is refused before the log is read; a label file's own as_of wins over it
    snapshot = None if labels_path is not None or as_of is None else parse_as_of(as_of)
    taxonomy = load_taxonomy(taxonomy_path)
    definition = load_definition(definition_path)
    event_mapping = load_mapping(mapping)
    with tempfile.TemporaryDirectory(prefix="lifecycle-check-") as tmp:
        events, summary = load_events(
            events_path,
            mapping=event_mapping,
            unknown_events=unknown_events,  # type: ignore[arg-type]
            quarantine_path=Path(tmp) / "quarantine.csv",
        )
        type_column = event_mapping.source_column(EVENT_TYPE) if event_mapping else EVENT_TYPE
        unknown_quarantined = _unknown_names(summary.quarantine_path, type_column)
    event_report = _event_report(events, summary, event_mapping, unknown_quarantined)
    report = DataReport(event_report, None, minimums)
    report.warnings += _event_warnings(event_report, qualifying)
    if len(events) == 0:
        report.reasons.append("no event passed the row checks (see the quarantine reasons)")
        return report

    if labels_path is not None:
        labels = load_labels(labels_path, taxonomy=_Lenient(taxonomy), as_of=as_of)
        source = f"label file {labels_path}"
    elif snapshot is not None:
        from customer_lifecycle.training.train import rulebook_labels  # train imports us

        rulebook, note = rulebook_for(rulebook_path, taxonomy=taxonomy, definition=definition)
        if rulebook is None:
            report.reasons.append(
                f"no labels: pass --labels, or --rulebook for the stages "
                f"{', '.join(taxonomy.stages)} ({note.removeprefix('skipped: ').split(';')[0]})"
            )
            return report
        labels = rulebook_labels(events, snapshot, rulebook, definition)
        source = f"the rulebook at {snapshot.isoformat()} (no label file given)"
    else:
        report.reasons.append(
            "no snapshot to judge: pass --labels, or --as-of for the rulebook's labels "
            f"(as_of + {horizon_days} days must end inside the log, whose last event is "
            f"{_iso(event_report.last_event)})"
        )
        return report

    report.labels = _label_report(
        events, labels, taxonomy, definition, source, horizon_days, qualifying
    )
    lab = report.labels
    if lab.unknown_stages:
        report.reasons.append(
            f"{sum(lab.unknown_stages.values()):,} labels name stages outside the taxonomy "
            f"({_counts(lab.unknown_stages)}): add them as synonyms in a taxonomy file "
            "(--taxonomy)"
        )
    if lab.horizon_problem is not None:
        report.reasons.append(lab.horizon_problem)
    dropped = lab.labelled - lab.counts.snapshots
    if dropped:
        report.warnings.append(
            f"{dropped:,} labelled snapshot(s) have no events before their as_of and are "
            "left out (do the label file's customer ids match the log's?)"
        )
    report.reasons += shortfalls(lab.counts, minimums)
    return report


class _Lenient(Taxonomy):
    """A taxonomy that passes unknown stage names through, so that they can be counted."""

    def normalise(self, name: str) -> str:
        try:
            return super().normalise(name)
        except ValueError:
            return str(name).strip()

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__(stages=taxonomy.stages, synonyms=dict(taxonomy.synonyms))


def _event_report(
    events: pd.DataFrame,
    summary: LoadSummary,
    mapping: EventMapping | None,
    unknown_quarantined: dict[str, int],
) -> EventReport:
    types = events[EVENT_TYPE].value_counts()
    event_types = {str(k): int(v) for k, v in types.items() if v}
    mapped_from: dict[str, list[str]] = {}
    if mapping is not None:
        for source, target in mapping.event_types.items():
            if target in event_types and source != target:
                mapped_from.setdefault(target, []).append(source)
    amounts: dict[str, dict[str, float]] = {}
    for kind in ("purchase", "refund"):
        rows = (events[EVENT_TYPE] == kind).to_numpy()
        values = (
            events.loc[rows, AMOUNT].to_numpy(dtype=np.float64)
            if AMOUNT in events.columns
            else np.array([], dtype=np.float64)
        )
        given = values[~np.isnan(values)]
        amounts[kind] = {
            "rows": int(rows.sum()),
            "with_amount": int(len(given)),
            "total": float(given.sum()),
        }
    empty = len(events) == 0
    return EventReport(
        load=summary,
        customers=int(events[CUSTOMER_ID].nunique()),
        first_event=None if empty else events[TIMESTAMP].min(),
        last_event=None if empty else events[TIMESTAMP].max(),
        event_types=event_types,
        mapped_from=mapped_from,
        unknown_quarantined=unknown_quarantined,
        amounts=amounts,
    )


#: Event types of a log with nothing but orders (no browsing, no engagement).
PURCHASE_ONLY_TYPES = frozenset({"purchase", "refund"})


def _event_warnings(ev: EventReport, qualifying: str) -> list[str]:
    out = []
    purchases = ev.amounts["purchase"]
    if purchases["rows"] == 0:
        hint = (
            ": with --qualifying purchases every customer counts as churned"
            if qualifying == "purchases"
            else ""
        )
        out.append(f"no purchase events; the purchase and amount features are all zero{hint}")
    elif purchases["with_amount"] == 0:
        out.append(
            f"{int(purchases['rows']):,} purchase events and none carries an amount: the "
            "amount features are all zero"
        )
    if purchases["rows"] > 0 and set(ev.event_types) <= PURCHASE_ONLY_TYPES:
        out.append(
            "the log holds purchase events only: rulebook labels can only be stages reached "
            "by purchases (purchase, retention); train with a taxonomy of such stages or "
            "with --labels (docs/events.md#purchase-only-logs)"
        )
    return out


def _label_report(
    events: pd.DataFrame,
    labels: pd.DataFrame,
    taxonomy: Taxonomy,
    definition: FeatureDefinition,
    source: str,
    horizon_days: int,
    qualifying: str,
) -> LabelReport:
    known = labels["stage"].isin(taxonomy.stages).to_numpy()
    stages_labelled = {s: int((labels["stage"] == s).sum()) for s in taxonomy.stages}
    unknown = labels.loc[~known, "stage"].value_counts()
    # a snapshot counts when its customer has an event strictly before its as_of, as the
    # features see it
    first = events.groupby(CUSTOMER_ID, observed=True)[TIMESTAMP].min()
    first.index = first.index.astype(str)
    seen = labels[CUSTOMER_ID].map(first)
    has_history = (seen < labels["as_of"]).fillna(False).to_numpy(dtype=bool)
    window_end = labels["as_of"].max() + pd.Timedelta(days=horizon_days)
    try:
        check_horizon(events, labels["as_of"], horizon_days)
        problem = None
    except ValueError as exc:
        problem = str(exc)
    kept = labels[has_history].reset_index(drop=True)
    churn = None
    if problem is None and len(kept):
        churn = churn_labels(
            events,
            kept[[CUSTOMER_ID, "as_of"]],
            horizon_days=horizon_days,
            qualifying=qualifying,
            definition=definition,
        )
    per_snapshot: dict[str, dict[str, int | None]] = {}
    for when in labels["as_of"].drop_duplicates().sort_values():
        stamp = pd.Timestamp(when)
        mask = (kept["as_of"] == stamp).to_numpy()
        churned = None if churn is None else int(churn[mask].sum())
        per_snapshot[stamp.isoformat()] = {
            "snapshots": int((labels["as_of"] == stamp).sum()),
            "with_history": int(mask.sum()),
            "churned": churned,
            "not_churned": None if churned is None else int(mask.sum()) - churned,
        }
    counts = TrainingCounts.of(
        kept[CUSTOMER_ID].to_numpy(), kept["stage"].to_numpy(), churn, stages=taxonomy.stages
    )
    return LabelReport(
        source=source,
        horizon_days=horizon_days,
        qualifying=qualifying,
        labelled=len(labels),
        stages_labelled=stages_labelled,
        unknown_stages={str(k): int(v) for k, v in unknown.items()},
        per_snapshot=per_snapshot,
        window_end=window_end,
        horizon_problem=problem,
        counts=counts,
    )


def _unknown_names(quarantine: Path | None, column: str) -> dict[str, int]:
    """Source event names of the rows quarantined as unknown, with their counts."""
    if quarantine is None or not quarantine.is_file():
        return {}
    rows = pd.read_csv(quarantine, dtype=str, keep_default_na=False)
    if column not in rows.columns:
        return {}
    names = rows.loc[rows["reason"] == "unknown_event_type", column].value_counts()
    return {str(k): int(v) for k, v in names.items()}


def _iso(when: pd.Timestamp | None) -> str | None:
    return None if when is None or pd.isna(when) else when.isoformat()


def _counts(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name!r}: {n:,}" for name, n in ordered)
