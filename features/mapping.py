"""Event mappings: how a source log's columns and event names map onto the contract.

A mapping is a YAML file (docs/events.md) or a shipped preset (``ga4``, ``segment``),
loaded by :func:`load_mapping` into an :class:`EventMapping` and applied by
:func:`features.events.load_events` and :func:`features.validation.validate_events`.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.features.contract import (
    AMOUNT,
    CANONICAL_EVENT_TYPES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)
from customer_lifecycle.features.messages import did_you_mean
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

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

# `a.b.c`, then optionally `[name]` or `[field=name]`, then optionally `.x.y`.
_SOURCE = re.compile(
    r"^(?P<path>[^\[\]=]+?)"
    r"(?:\[(?:(?P<key_field>[^\[\]=]+)=)?(?P<key>[^\[\]=]+)\](?:\.(?P<value>[^\[\]=]+))?)?$"
)
_SOURCE_FORMS = "a column, a.field, list[key] or list[key_field=key].value"


def _dotted(text: str, whole: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split("."))
    if any(p == "" for p in parts):
        raise ValueError(f"source {whole!r} has an empty field name (forms: {_SOURCE_FORMS})")
    return parts


class FieldSource(BaseModel):
    """One place in the source data a value is read from: the model of a source string.

    This is the representation every reader resolves (:mod:`features.readers` and
    :mod:`features.batch_readers` with Arrow compute, the Spark engine with column
    expressions); it is parsed from the text a mapping file writes (docs/events.md):

    ===============================  ==================================================
    text                             meaning
    ===============================  ==================================================
    ``user_id``                      the column ``user_id``
    ``ecommerce.purchase_revenue``   field ``purchase_revenue`` of the nested record
                                     (Parquet struct, JSON object) in column
                                     ``ecommerce``; deeper paths (``a.b.c``) go on
    ``event_params[value]``          in the list of records ``event_params``, the first
                                     entry whose ``key`` is ``"value"``; its ``value``
                                     field, and as that is a record
                                     (``string_value``, ``int_value``, ...), the first
                                     of its fields that is not null
    ``event_params[key=value].value``  the same, written out in full: the key field,
                                     the key, and the path of the value in the entry
    ===============================  ==================================================

    Resolution, the same for every reader and engine:

    1. A column whose name is the whole text (``properties.total`` in a CSV, or in a
       JSON log already flattened) is that column. Otherwise ``column`` is the
       top-level column and ``path`` the fields inside it, outer to inner.
    2. With ``key`` set, the value at ``column`` + ``path`` is a list of records; the
       first record whose ``key_field`` equals ``key`` is taken (null when none does or
       the list is null), then ``value_path`` inside it.
    3. A value that is a record at the end of a key/value lookup is *coalesced*: the
       first of its fields, in their declared order, that is not null, as text when
       the fields' types differ (GA4: ``string_value``, ``int_value``,
       ``float_value``, ``double_value``).
    4. A missing field of a record that exists in the data gives null; a missing
       top-level column or a path through something that is not a record is an error
       naming ``text``.

    Attributes
    ----------
    text
        The source as written; also the name of the resolved column handed to
        :func:`features.validation.validate_events` (and shown in its messages).
    column
        Top-level column of the source data.
    path
        Field names inside the nested record ``column``, outer to inner (empty: the
        column itself).
    key
        ``None``; else the key of a repeated key/value record to look up.
    key_field
        The field of each list entry holding its key (``"key"``).
    value_path
        The path of the value inside the matching entry (``("value",)``).
    """

    model_config = ConfigDict(frozen=True)

    text: str
    column: str
    path: tuple[str, ...] = ()
    key: str | None = None
    key_field: str = "key"
    value_path: tuple[str, ...] = ("value",)

    @property
    def is_plain(self) -> bool:
        """Whether the source is a column with no path and no key lookup."""
        return not self.path and self.key is None

    @classmethod
    def parse(cls, text: str) -> FieldSource:
        """Parse a source string; ``ValueError`` (its predicate only) on bad syntax."""
        text = text.strip()
        match = _SOURCE.match(text)
        if match is None:
            raise ValueError(f"source {text!r} is not one of the forms {_SOURCE_FORMS}")
        names = _dotted(match["path"], text)
        if match["key"] is None:
            return cls(text=text, column=names[0], path=names[1:])
        return cls(
            text=text,
            column=names[0],
            path=names[1:],
            key=match["key"].strip(),
            key_field=(match["key_field"] or "key").strip() or "key",
            value_path=_dotted(match["value"], text) if match["value"] else ("value",),
        )


class ColumnSource(BaseModel):
    """Where one contract column comes from: the first of ``first_of`` that has a value.

    A plain string in a mapping file is a list of one. For each row, the value is that
    of the first source that is neither null nor empty text. Sources the data lacks
    altogether count as null, as long as one of them is present (with none present,
    the column is missing). Values of different types are unified as text.

    Attributes
    ----------
    first_of
        The sources, in order of preference.
    """

    model_config = ConfigDict(frozen=True)

    first_of: tuple[FieldSource, ...] = Field(min_length=1)

    @property
    def name(self) -> str:
        """The resolved column's name: the source text, or ``first_of(a, b, ...)``."""
        if len(self.first_of) == 1:
            return self.first_of[0].text
        return f"first_of({', '.join(s.text for s in self.first_of)})"

    @property
    def is_plain(self) -> bool:
        """Whether this is one column read as is (the mapping files of old)."""
        return len(self.first_of) == 1 and self.first_of[0].is_plain


def _column_source(value: Any) -> Any:
    if isinstance(value, ColumnSource):
        return value
    if isinstance(value, dict):
        unknown = [k for k in value if k != "first_of"]
        if unknown:
            raise ValueError(
                f"has unknown key {unknown[0]!r}{did_you_mean(unknown[0], ['first_of'])}"
                " (a source is a name, or {first_of: [name, ...]})"
            )
        items = value.get("first_of")
        if not isinstance(items, list) or not items:
            raise ValueError("first_of must be a list of one or more sources")
        return ColumnSource(first_of=tuple(FieldSource.parse(_name(v)) for v in items))
    return ColumnSource(first_of=(FieldSource.parse(_name(value)),))


#: A contract column's source as a mapping file writes it: a string, or ``{first_of: [...]}``.
SourceSpec = Annotated[ColumnSource, BeforeValidator(_column_source)]


def _preset_name(name: str) -> str:
    if name.lower() not in PRESETS:
        raise ValueError(
            f"{name!r} is not a preset{did_you_mean(name.lower(), PRESETS)}"
            f" (presets: {', '.join(PRESETS)})"
        )
    return name.lower()


class EventMapping(ConfigModel):
    """How a source log's columns and event names map onto the contract.

    Parameters
    ----------
    columns
        Contract column -> where it comes from (:class:`ColumnSource`): a column name
        (``{"customer_id": "user_id"}``), a field of a nested record
        (``"ecommerce.purchase_revenue"``), a key of a repeated key/value record
        (``"event_params[value]"``), or the first non-null of several
        (``{"first_of": ["user_id", "user_pseudo_id"]}``); see :class:`FieldSource`.
        Contract columns left out are looked up under their own name.
    event_types
        Source event name -> canonical event type, e.g. ``{"view_item": "product_view"}``.
        Names left out pass through unchanged.
    timestamp_unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` when the source time is an epoch number
        (GA4's ``event_timestamp`` is microseconds); ``None`` for ISO 8601 strings.
    extends
        A preset (``ga4``, ``segment``) this mapping starts from: :func:`load_mapping`
        takes the preset and replaces what this file sets (each column and event name
        it lists, and the time unit if given).
    allow_missing_amounts
        ``False`` (default): when ``columns`` names a source for ``amount`` and the log
        has purchases but the source is missing or null on every purchase, loading
        stops with one line (:func:`refuse_lost_amounts`). ``True`` loads the log
        anyway (``--allow-missing-amounts``).

    Raises
    ------
    pydantic.ValidationError
        (a ``ValueError``) On an unknown contract column, a malformed source, an event
        type that is not canonical, or an unknown time unit or preset;
        :func:`load_mapping` words it as one line that suggests the closest name.
    """

    columns: dict[ContractColumn, SourceSpec] = Field(default_factory=dict)
    event_types: dict[SourceName, CanonicalEventType] = Field(default_factory=dict)
    timestamp_unit: TimestampUnit | None = None
    extends: Annotated[str, BeforeValidator(_name), AfterValidator(_preset_name)] | None = None
    allow_missing_amounts: bool = False

    def source_column(self, column: str) -> str:
        """Name of the (resolved) source column that feeds contract ``column``.

        For a plain column this is its name in the log; for other sources, the name
        under which the readers add the resolved values (:attr:`ColumnSource.name`).
        """
        source = self.columns.get(column)
        return column if source is None else source.name

    def source(self, column: str) -> ColumnSource:
        """Where contract ``column`` comes from (its own name when not mapped)."""
        return self.columns.get(column) or ColumnSource(first_of=(FieldSource.parse(column),))

    @property
    def is_plain(self) -> bool:
        """Whether every mapped column is a plain column (nothing to resolve)."""
        return all(s.is_plain for s in self.columns.values())


def refuse_lost_amounts(
    mapping: EventMapping | None, *, purchases: int, with_amount: int, missing: bool, label: str
) -> None:
    """Stop a load whose mapped ``amount`` source lost every purchase amount.

    Parameters
    ----------
    mapping
        The load's mapping; nothing is checked without one, when it does not name a
        source for ``amount``, or when it allows missing amounts.
    purchases, with_amount
        Purchase rows in the log, and those of them with an amount.
    missing
        Whether the data lacks the ``amount`` source altogether.
    label
        How the message names the log.

    Raises
    ------
    ValueError
        One line naming the source, when purchases exist and none has an amount.
    """
    if mapping is None or mapping.allow_missing_amounts or AMOUNT not in mapping.columns:
        return
    if purchases == 0 or with_amount > 0:
        return
    name = mapping.columns[AMOUNT].name
    what = "has no such field" if missing else f"is null on all {purchases:,} purchases"
    raise ValueError(
        f"{label}: the amount source {name!r} {what}, so every purchase amount would be lost; "
        "fix the mapping's columns.amount, or pass --allow-missing-amounts to load without them"
    )


def load_mapping(spec: str | Path | EventMapping | None) -> EventMapping | None:
    """Load a mapping: ``None`` gives ``None``, a preset name or a YAML file path a mapping.

    Parameters
    ----------
    spec
        ``None``; ``"ga4"`` or ``"segment"`` for a shipped preset; an
        :class:`EventMapping` (returned as is); otherwise the path of a YAML file with
        the keys ``columns``, ``event_types`` and optionally ``timestamp_unit``,
        ``extends`` and ``allow_missing_amounts`` (see ``docs/events.md``).

    Returns
    -------
    EventMapping or None

    Raises
    ------
    ValueError
        With a one-line message naming the file and the problem: unreadable file, YAML
        syntax error, not a mapping, unknown key, unknown contract column, malformed
        source, non-canonical event type, unknown time unit or preset.
    """
    if spec is None or isinstance(spec, EventMapping):
        return spec
    if isinstance(spec, str) and spec.lower() in PRESETS:
        return _preset(spec.lower())
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"mapping file {path} does not exist (presets are {', '.join(PRESETS)})")
    mapping, _ = load_config(EventMapping, path, what="mapping file")
    if mapping.extends is None:
        return mapping
    base = _preset(mapping.extends)
    return base.model_copy(
        update={
            "columns": {**base.columns, **mapping.columns},
            "event_types": {**base.event_types, **mapping.event_types},
            "timestamp_unit": mapping.timestamp_unit or base.timestamp_unit,
            "allow_missing_amounts": mapping.allow_missing_amounts,
            "extends": mapping.extends,
        }
    )


def _preset(name: str) -> EventMapping:
    preset = resources.files("customer_lifecycle.features.presets") / f"{name}.yaml"
    mapping, _ = load_config(EventMapping, None, what=f"mapping preset {name!r}", default=preset)
    return mapping
