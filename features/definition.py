"""The declarative feature definition (docs/features.md).

Groups of event types, trailing windows, monetary groups, trend, active-day and
funnel settings are data (``features/config/definition.yaml``). The names and
meaning of every output column are derived here, once, and every engine (the
in-memory engine of :mod:`features.engine`, the Spark engine) reads the same
:class:`FeatureDefinition`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from customer_lifecycle.features.config import read_yaml
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES

ALL = "all"
DAY_NS = 86_400 * 10**9

_KEYS = {
    "groups",
    "count_windows_days",
    "monetary_groups",
    "monetary_windows_days",
    "trend",
    "active_days_windows_days",
    "funnel_levels",
    "funnel_windows_days",
    "last_active_windows_days",
    "last_active_by_event_type",
    "purchase_group",
    "extra_event_types",
}


@dataclass(frozen=True)
class FeatureDefinition:
    """Everything that decides which features are built and how they are named.

    Build one with :func:`load_definition`; the constructor checks consistency.
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
        known = set(CANONICAL_EVENT_TYPES) | set(self.extra_event_types)
        if ALL in self.groups:
            raise ValueError(f"group name {ALL!r} is reserved for every event")
        for name, types in self.groups.items():
            if not name.isidentifier():
                raise ValueError(f"group name {name!r} must be letters, digits and underscores")
            for t in types:
                _check_event_type(t, known, where=f"group {name!r}")
        for level, types in self.funnel_levels.items():
            if level < 1:
                raise ValueError(f"funnel level {level} must be 1 or more")
            for t in types:
                _check_event_type(t, known, where=f"funnel level {level}")
        for g in (*self.monetary_groups, self.purchase_group):
            if g not in self.groups:
                raise ValueError(_unknown("group", g, list(self.groups)))
        windows = (
            *self.count_windows_days,
            *self.monetary_windows_days,
            *self.active_days_windows_days,
            *self.funnel_windows_days,
            *self.last_active_windows_days,
        )
        if any(w <= 0 for w in windows):
            raise ValueError("every window must be a positive number of days")
        for key in (
            "count_windows_days",
            "monetary_windows_days",
            "active_days_windows_days",
            "funnel_windows_days",
            "last_active_windows_days",
        ):
            ws = getattr(self, key)
            if list(ws) != sorted(set(ws)):
                raise ValueError(f"{key} must list distinct windows in increasing order")
        if not 0 < self.trend_recent_days < self.trend_baseline_days:
            raise ValueError("trend needs 0 < recent_days < baseline_days")

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


def definition_from_dict(data: Any, *, source: str = "definition") -> FeatureDefinition:
    """Build a :class:`FeatureDefinition` from the YAML layout, with one-line errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a mapping of settings")
    for key in data:
        if key not in _KEYS:
            raise ValueError(f"{source}: {_unknown('setting', key, sorted(_KEYS))}")
    groups = data.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"{source}: 'groups' must map group names to event types")
    trend = data.get("trend") or {}
    if not isinstance(trend, dict) or set(trend) - {"recent_days", "baseline_days"}:
        raise ValueError(f"{source}: 'trend' takes recent_days and baseline_days")
    try:
        return FeatureDefinition(
            groups={str(g): tuple(str(t) for t in (ts or [])) for g, ts in groups.items()},
            count_windows_days=_ints(data.get("count_windows_days", [7, 30, 90, 365])),
            monetary_groups=tuple(str(g) for g in data.get("monetary_groups", [])),
            monetary_windows_days=_ints(data.get("monetary_windows_days", [30, 90, 365])),
            trend_recent_days=int(trend.get("recent_days", 30)),
            trend_baseline_days=int(trend.get("baseline_days", 90)),
            active_days_windows_days=_ints(data.get("active_days_windows_days", [7, 30, 90])),
            funnel_levels={
                int(k): tuple(str(t) for t in v)
                for k, v in (data.get("funnel_levels") or {}).items()
            },
            funnel_windows_days=_ints(data.get("funnel_windows_days", [30])),
            last_active_windows_days=_ints(data.get("last_active_windows_days", [1, 3, 7, 30])),
            last_active_by_event_type=bool(data.get("last_active_by_event_type", True)),
            purchase_group=str(data.get("purchase_group", "purchase")),
            extra_event_types=tuple(str(t) for t in data.get("extra_event_types") or []),
        )
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"{source}: a setting has the wrong shape ({exc})") from None


def load_definition(path: str | Path | None = None) -> FeatureDefinition:
    """Load a definition YAML file; ``None`` loads the shipped default."""
    data, source = read_yaml(
        path,
        package="customer_lifecycle.features.config",
        default="definition.yaml",
        what="feature definition",
    )
    return definition_from_dict(data, source=source)


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint}"


def _check_event_type(name: str, known: set[str], *, where: str) -> None:
    if name not in known:
        raise ValueError(f"{where}: {_unknown('event type', name, sorted(known))}")
