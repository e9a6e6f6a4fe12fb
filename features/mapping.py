"""Event mappings: how a source log's columns and event names map onto the contract.

A mapping is a YAML file (docs/events.md) or a shipped preset (``ga4``, ``segment``),
loaded by :func:`load_mapping` into an :class:`EventMapping` and applied by
:func:`features.events.load_events` and :func:`features.validation.validate_events`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.features.contract import (
    CANONICAL_EVENT_TYPES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)
from customer_lifecycle.features.messages import did_you_mean
from pydantic import AfterValidator, BeforeValidator, Field

#: Shipped mapping presets, loadable by name with :func:`load_mapping`.
PRESETS: tuple[str, ...] = ("ga4", "segment")

#: Units accepted for epoch-number timestamps, with their length in nanoseconds.
TIMESTAMP_UNITS: dict[str, int] = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

_CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


def _name(value: Any) -> str:
    if value is None or isinstance(value, dict | list) or str(value).strip() == "":
        raise ValueError(f"must be a name, got {value!r}")
    return str(value)


def _contract_column(name: str) -> str:
    if name not in _CONTRACT_COLUMNS:
        raise ValueError(
            f"{name!r} is not a contract column{did_you_mean(name, _CONTRACT_COLUMNS)}"
            f" (contract columns: {', '.join(_CONTRACT_COLUMNS)})"
        )
    return name


def _canonical_event_type(name: str) -> str:
    if name not in CANONICAL_EVENT_TYPES:
        raise ValueError(
            f"is mapped to {name!r}, which is not a canonical event type"
            f"{did_you_mean(name, CANONICAL_EVENT_TYPES)}"
        )
    return name


def _timestamp_unit(unit: str) -> str:
    if unit not in TIMESTAMP_UNITS:
        hint = did_you_mean(unit, TIMESTAMP_UNITS)
        raise ValueError(f"{unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}{hint}")
    return unit


#: A column or event name of the source log (numbers in YAML are read as their text).
SourceName = Annotated[str, BeforeValidator(_name)]
ContractColumn = Annotated[str, BeforeValidator(_name), AfterValidator(_contract_column)]
CanonicalEventType = Annotated[str, BeforeValidator(_name), AfterValidator(_canonical_event_type)]
TimestampUnit = Annotated[str, AfterValidator(_timestamp_unit)]


class EventMapping(ConfigModel):
    """How a source log's columns and event names map onto the contract.

    Parameters
    ----------
    columns
        Contract column -> source column name, e.g. ``{"customer_id": "user_id"}``.
        Contract columns left out are looked up under their own name.
    event_types
        Source event name -> canonical event type, e.g. ``{"view_item": "product_view"}``.
        Names left out pass through unchanged.
    timestamp_unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` when the source time is an epoch number
        (GA4's ``event_timestamp`` is microseconds); ``None`` for ISO 8601 strings.

    Raises
    ------
    pydantic.ValidationError
        (a ``ValueError``) On an unknown contract column, an event type that is not
        canonical, or an unknown time unit; :func:`load_mapping` words it as one line
        that suggests the closest name.
    """

    columns: dict[ContractColumn, SourceName] = Field(default_factory=dict)
    event_types: dict[SourceName, CanonicalEventType] = Field(default_factory=dict)
    timestamp_unit: TimestampUnit | None = None

    def source_column(self, column: str) -> str:
        """Return the source column name that feeds contract ``column``."""
        return self.columns.get(column, column)


def load_mapping(spec: str | Path | None) -> EventMapping | None:
    """Load a mapping: ``None`` gives ``None``, a preset name or a YAML file path a mapping.

    Parameters
    ----------
    spec
        ``None``; ``"ga4"`` or ``"segment"`` for a shipped preset; otherwise the path of a
        YAML file with the keys ``columns``, ``event_types`` and optionally
        ``timestamp_unit`` (see ``docs/events.md``).

    Returns
    -------
    EventMapping or None

    Raises
    ------
    ValueError
        With a one-line message naming the file and the problem: unreadable file, YAML
        syntax error, not a mapping, unknown key, unknown contract column, non-canonical
        event type or unknown time unit.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.lower() in PRESETS:
        name = spec.lower()
        preset = resources.files("customer_lifecycle.features.presets") / f"{name}.yaml"
        mapping, _ = load_config(
            EventMapping, None, what=f"mapping preset {name!r}", default=preset
        )
        return mapping
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"mapping file {path} does not exist (presets are {', '.join(PRESETS)})")
    mapping, _ = load_config(EventMapping, path, what="mapping file")
    return mapping
