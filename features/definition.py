"""The declarative feature definition (docs/features.md).

Groups of event types, trailing windows, monetary groups, trend, active-day and
funnel settings are data (``features/config/definition.yaml``). The names and
meaning of every output column are derived here, once, and every engine (the
in-memory engine of :mod:`features.engine`, the Spark engine) reads the same
:class:`FeatureDefinition`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from customer_lifecycle.features.config_file import ConfigModel, load_config, parse_config
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.features.messages import did_you_mean
from pydantic import AfterValidator, Field, PositiveInt, ValidationInfo, model_validator

ALL = "all"
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class FeatureDefinition:
    """Everything that decides which features are built and how they are named.

    Build one with :func:`load_definition`; the constructor checks consistency against
    :class:`DefinitionFile` and raises a one-line ``ValueError``.
    """

    groups: dict[str, tuple[str, ...]]
    count_windows_days: tuple[int, ...] = (7, 30, 90, 365)
    monetary_groups: tuple[str, ...] = ("purchase", "refund")
    monetary_windows_days: tuple[int, ...] = (30, 90, 365)
    trend_recent_days: int = 30
    trend_baseline_days: int = 90
    active_days_windows_days: tuple[int, ...] = (7, 30, 90)
    funnel_levels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    funnel_windows_days: tuple[int, ...] = (30,)
    last_active_windows_days: tuple[int, ...] = (1, 3, 7, 30)
    last_active_by_event_type: bool = True
    purchase_group: str = "purchase"
    extra_event_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The rules live in one place, the file's model: a definition built in Python
        # is checked exactly as one read from YAML.
        parse_config(DefinitionFile, self.to_dict(), source="feature definition")

    # -- derived layout, shared by every engine ---------------------------------------
    @property
    def group_names(self) -> tuple[str, ...]:
        """Groups in output order, ending with the implicit ``all``."""
        return (*self.groups, ALL)

    @property
    def count_windows(self) -> tuple[int, ...]:
        """Windows for counts: the configured ones plus the trend's two, sorted, unique."""
        return tuple(
            sorted({*self.count_windows_days, self.trend_recent_days, self.trend_baseline_days})
        )

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every event type the definition knows: the canonical ones, then the extra ones."""
        return (*CANONICAL_EVENT_TYPES, *self.extra_event_types)

    def feature_names(self) -> list[str]:
        """Output columns, in order. Names are stable: they only change with the definition."""
        return list(self._names)

    def describe(self) -> list[tuple[str, str]]:
        """``(column, meaning)`` for every output column, in order."""
        return list(self._described)

    def __hash__(self) -> int:
        # Hashable by value, so that engines can cache what they compile from a
        # definition (the dict fields would make the generated hash fail).
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._described)

    @cached_property
    def _described(self) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        for g in self.group_names:
            for w in self.count_windows_days:
                out.append((f"count_{g}_{w}d", f"{g} events in the last {w} days"))
            out.append((f"count_{g}_all", f"{g} events before as_of"))
        for g in self.group_names:
            out.append(
                (f"recency_{g}_days", f"days since the last {g} event (NaN when there is none)")
            )
        for g in self.monetary_groups:
            for w in self.monetary_windows_days:
                out.append((f"amount_{g}_sum_{w}d", f"total {g} amount in the last {w} days"))
            out.append((f"amount_{g}_sum_all", f"total {g} amount before as_of"))
            out.append(
                (f"amount_{g}_mean_all", f"mean {g} amount (NaN when no amount was recorded)")
            )
        r, b = self.trend_recent_days, self.trend_baseline_days
        for g in self.group_names:
            out.append(
                (
                    f"trend_{g}",
                    f"log((1 + {g} events in the last {r} days) / (1 + {g} events in the "
                    f"{b - r} days before, scaled to {r} days))",
                )
            )
        for w in self.active_days_windows_days:
            out.append((f"active_days_{w}d", f"distinct UTC days with an event, last {w} days"))
        out.append(("active_days_all", "distinct UTC days with an event before as_of"))
        out.append(("funnel_depth_all", "highest funnel level reached (0 when none)"))
        for w in self.funnel_windows_days:
            out.append((f"funnel_depth_{w}d", f"highest funnel level in the last {w} days"))
        for g in self.groups:
            out.append(
                (
                    f"gap_{g}_days",
                    f"days from the last {g} event to the last event of any kind "
                    "(NaN when there is none)",
                )
            )
        for g in self.group_names:
            for w in self.last_active_windows_days:
                out.append(
                    (
                        f"last_active_count_{g}_{w}d",
                        f"{g} events in the {w} days up to and including the last event",
                    )
                )
        for w in self.last_active_windows_days:
            out.append(
                (
                    f"last_active_funnel_depth_{w}d",
                    f"highest funnel level in the {w} days up to the last event",
                )
            )
        if self.last_active_by_event_type:
            for t in self.event_types:
                for w in self.last_active_windows_days:
                    out.append(
                        (
                            f"last_active_count_type_{t}_{w}d",
                            f"{t} events in the {w} days up to and including the last event",
                        )
                    )
        out += [
            ("tenure_days", "days since the first event"),
            ("purchase_days", "distinct UTC days with a purchase"),
            ("purchase_gap_mean_days", "mean days between purchase days (NaN below 2)"),
            ("purchase_gap_std_days", "standard deviation of those gaps (NaN below 2)"),
            (
                "purchase_overdue_ratio",
                "days since the last purchase over the mean gap (NaN below 2 purchase days)",
            ),
            ("btyd_frequency", "repeat purchase days: purchase_days - 1 (0 when none)"),
            (
                "btyd_recency_days",
                "days from the first purchase to the first purchase of the latest purchase "
                "day (0 with one purchase day, NaN with none)",
            ),
            ("btyd_age_days", "days from the first purchase to as_of (NaN with none)"),
            (
                "btyd_mean_spend",
                "mean spend per repeat purchase day: recorded purchase amounts on the "
                "purchase days after the first, over those of these days with an amount "
                "(NaN when there is none)",
            ),
        ]
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """The definition as plain data (the YAML layout), for logging and artifacts."""
        return {
            "groups": {g: list(t) for g, t in self.groups.items()},
            "count_windows_days": list(self.count_windows_days),
            "monetary_groups": list(self.monetary_groups),
            "monetary_windows_days": list(self.monetary_windows_days),
            "trend": {
                "recent_days": self.trend_recent_days,
                "baseline_days": self.trend_baseline_days,
            },
            "active_days_windows_days": list(self.active_days_windows_days),
            "funnel_levels": {int(k): list(v) for k, v in self.funnel_levels.items()},
            "funnel_windows_days": list(self.funnel_windows_days),
            "last_active_windows_days": list(self.last_active_windows_days),
            "last_active_by_event_type": self.last_active_by_event_type,
            "purchase_group": self.purchase_group,
            "extra_event_types": list(self.extra_event_types),
        }


def _group_name(name: str) -> str:
    if name == ALL:
        raise ValueError(f"{ALL!r} is reserved for every event")
    if not name.isidentifier():
        raise ValueError(f"{name!r} must be letters, digits and underscores")
    return name


def _known_event_type(name: str, info: ValidationInfo) -> str:
    known = (*CANONICAL_EVENT_TYPES, *info.data.get("extra_event_types", ()))
    if name not in known:
        raise ValueError(f"names unknown event type {name!r}{did_you_mean(name, known)}")
    return name


def _known_group(name: str, info: ValidationInfo) -> str:
    groups = info.data.get("groups")
    if groups is not None and name not in groups:
        raise ValueError(f"names unknown group {name!r}{did_you_mean(name, groups)}")
    return name


def _increasing(windows: list[int]) -> list[int]:
    if windows != sorted(set(windows)):
        raise ValueError("must list distinct windows in increasing order")
    return windows


GroupName = Annotated[str, AfterValidator(_group_name)]
#: A canonical event type, or one listed in ``extra_event_types``.
EventTypeName = Annotated[str, AfterValidator(_known_event_type)]
#: The name of a group of ``groups``.
GroupRef = Annotated[str, AfterValidator(_known_group)]
#: Trailing windows in days: positive, distinct, increasing (the prefix sums need it).
Windows = Annotated[list[PositiveInt], AfterValidator(_increasing)]


class Trend(ConfigModel):
    """Events per day in the last ``recent_days`` against the days before, to ``baseline_days``."""

    recent_days: PositiveInt = 30
    baseline_days: PositiveInt = 90

    @model_validator(mode="after")
    def _recent_inside_baseline(self) -> Trend:
        if not self.recent_days < self.baseline_days:
            raise ValueError("needs 0 < recent_days < baseline_days")
        return self


class DefinitionFile(ConfigModel):
    """The feature definition's YAML layout (``features/config/definition.yaml``).

    Fields are checked in this order, so the event types and groups that later fields
    name are known when those are checked.
    """

    extra_event_types: list[str] = Field(default_factory=list)
    groups: Annotated[dict[GroupName, list[EventTypeName]], Field(min_length=1)]
    count_windows_days: Windows = [7, 30, 90, 365]
    monetary_groups: list[GroupRef] = Field(default_factory=list)
    monetary_windows_days: Windows = [30, 90, 365]
    trend: Trend = Trend()
    active_days_windows_days: Windows = [7, 30, 90]
    funnel_levels: dict[PositiveInt, list[EventTypeName]] = Field(default_factory=dict)
    funnel_windows_days: Windows = [30]
    last_active_windows_days: Windows = [1, 3, 7, 30]
    last_active_by_event_type: bool = True
    purchase_group: GroupRef = Field("purchase", validate_default=True)

    def to_definition(self) -> FeatureDefinition:
        """The :class:`FeatureDefinition` this file describes."""
        return FeatureDefinition(
            groups={g: tuple(types) for g, types in self.groups.items()},
            count_windows_days=tuple(self.count_windows_days),
            monetary_groups=tuple(self.monetary_groups),
            monetary_windows_days=tuple(self.monetary_windows_days),
            trend_recent_days=self.trend.recent_days,
            trend_baseline_days=self.trend.baseline_days,
            active_days_windows_days=tuple(self.active_days_windows_days),
            funnel_levels={level: tuple(types) for level, types in self.funnel_levels.items()},
            funnel_windows_days=tuple(self.funnel_windows_days),
            last_active_windows_days=tuple(self.last_active_windows_days),
            last_active_by_event_type=self.last_active_by_event_type,
            purchase_group=self.purchase_group,
            extra_event_types=tuple(self.extra_event_types),
        )


def definition_from_dict(data: Any, *, source: str = "definition") -> FeatureDefinition:
    """Build a :class:`FeatureDefinition` from the YAML layout, with one-line errors."""
    return parse_config(DefinitionFile, data, source=source).to_definition()


def load_definition(path: str | Path | None = None) -> FeatureDefinition:
    """Load a definition YAML file; ``None`` loads the shipped default.

    Raises
    ------
    ValueError
        One line naming the file, the setting and the problem (with the closest name
        for a misspelt setting, event type or group).
    """
    shipped = resources.files("customer_lifecycle.features.config") / "definition.yaml"
    spec, _ = load_config(DefinitionFile, path, what="feature definition", default=shipped)
    return spec.to_definition()
