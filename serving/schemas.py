"""Request and response bodies of the HTTP API, as pydantic models.

Event rows get the same checks as rows of an event file (:mod:`features.events`), with
the same reason names: ``missing_customer_id``, ``missing_event_type``,
``unparseable_timestamp``, ``unparseable_amount``, ``amount_out_of_range``,
``negative_purchase_amount`` and ``unknown_event_type`` (the strict policy). A bad
row is not quarantined here but refused with 422, its location (customer index, event
index, field) in ``loc``.

The JSON Schema carries the same rules where JSON Schema can say them (event type
enum, the time pattern, the amount bound, non-negative purchase amounts), so a client
generated from the OpenAPI document, or a fuzzer, knows what is accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from customer_lifecycle.features.contract import (
    CANONICAL_EVENT_TYPES,
    TIMESTAMP_FORMS,
    TIMESTAMP_PATTERN,
)
from customer_lifecycle.features.messages import did_you_mean
from customer_lifecycle.features.validation import MAX_AMOUNT
from customer_lifecycle.scoring.store.schema import VALUE_TIER_PATTERN
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

_EVENT_TYPES = frozenset(CANONICAL_EVENT_TYPES)
# Times are kept as nanoseconds since the epoch in int64, as in the event files: the
# range of such times, less a day. The pattern's years keep every text inside it;
# this bounds datetime objects (a Python caller's, not JSON's).
_EARLIEST = datetime(1677, 9, 22, tzinfo=UTC)
_LATEST = datetime(2262, 4, 11, tzinfo=UTC)
# The time texts accepted are the event contract's (features.contract,
# docs/events.md), the same as an event file's, so the OpenAPI document is exact and
# the file loader reads every accepted text to the same instant
# (tests/serving/test_hostile.py checks it). Epoch numbers, in text or not, are not
# times here: a file says its epoch unit in its mapping, a request cannot.
_TIME_TEXT = re.compile(TIMESTAMP_PATTERN)
# What counts as blank: Python's whitespace (what the file loader strips) plus the
# byte-order mark, spelled out so JSON Schema's regex dialect reads it the same way.
_BLANK = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_NOT_BLANK = re.compile(f"[^{_BLANK}]")
#: Strings echoed in a 422 answer are cut to this many characters.
_ECHO_CHARS = 64
_TIME_DOC = TIMESTAMP_FORMS + " The forms an event file accepts (docs/events.md)."


def _utc_time(value: object, handler: ValidatorFunctionWrapHandler) -> datetime:
    # One Python call per time: pydantic parses the text, this names the failure with
    # the loader's reason, reads naive times as UTC and checks the range.
    if isinstance(value, str):
        # fullmatch: "$" alone would let a trailing newline through.
        if _TIME_TEXT.fullmatch(value) is None:
            raise ValueError(
                "unparseable_timestamp: expected an ISO 8601 time such as "
                "2024-06-01T10:00:00Z (a date, optionally a time and an offset)"
            )
    elif not isinstance(value, datetime):
        raise ValueError("unparseable_timestamp: expected an ISO 8601 time string")
    try:
        parsed: datetime = handler(value)
    except ValidationError as exc:
        raise ValueError(f"unparseable_timestamp: {exc.errors()[0]['msg']}") from None
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if not _EARLIEST <= parsed < _LATEST:
        raise ValueError(
            "unparseable_timestamp: time outside the range of nanosecond times "
            "(1677-09-22 to 2262-04-11)"
        )
    return parsed


#: An ISO 8601 time, naive read as UTC, returned as an aware UTC ``datetime``.
UtcTime = Annotated[
    datetime,
    WrapValidator(_utc_time),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": TIMESTAMP_PATTERN,
            "description": _TIME_DOC,
        }
    ),
]


def _event_type(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("missing_event_type: event_type is blank")
    if name not in _EVENT_TYPES:
        hint = did_you_mean(name, CANONICAL_EVENT_TYPES) if len(name) <= _ECHO_CHARS else ""
        raise ValueError(f"unknown_event_type: {_cut(name)!r} is not a canonical event type{hint}")
    return name


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _number(value: object) -> object:
    # JSON numbers only: "5" or true are not amounts (pydantic would convert them).
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError("unparseable_amount: expected a JSON number or null")


def _amount_in_range(value: float | None) -> float | None:
    # The file loaders' bound: beyond it, sums of amounts over a window could overflow.
    if value is not None and abs(value) > MAX_AMOUNT:
        raise ValueError(f"amount_out_of_range: |amount| is above {MAX_AMOUNT:g}")
    return value


def _customer_id(value: str) -> str:
    if not _NOT_BLANK.search(value):
        raise ValueError("missing_customer_id: customer_id is blank")
    return value


CustomerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        json_schema_extra={"pattern": _NOT_BLANK.pattern},
        description="The customer's id, as in the CRM.",
        examples=["c0001234"],
    ),
    AfterValidator(_customer_id),
]


class Event(BaseModel):
    """One event of a customer (docs/events.md); unknown fields are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            # A purchase amount cannot be negative (refunds may be sent as -x or x).
            "if": {"properties": {"event_type": {"const": "purchase"}}, "required": ["event_type"]},
            "then": {
                "properties": {
                    "amount": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}]}
                }
            },
        },
    )

    timestamp: UtcTime
    event_type: Annotated[
        str,
        Field(
            json_schema_extra={"enum": list(CANONICAL_EVENT_TYPES)},
            description="A canonical event type.",
            examples=["purchase"],
        ),
        AfterValidator(_event_type),
    ]
    amount: Annotated[
        FiniteFloat | None,
        BeforeValidator(_number),
        AfterValidator(_amount_in_range),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        default=None,
        description="Money for purchases and refunds (refunds may be negative or positive); "
        f"at most {MAX_AMOUNT:g} in magnitude.",
    )
    channel: str | None = Field(default=None, max_length=256, description="Acquisition channel.")

    @model_validator(mode="after")
    def _purchase_not_negative(self) -> Event:
        if self.event_type == "purchase" and self.amount is not None and self.amount < 0:
            raise ValueError("negative_purchase_amount: a purchase amount cannot be negative")
        return self


class CustomerEvents(BaseModel):
    """A customer and their events (any order; events at or after ``as_of`` are unused)."""

    customer_id: CustomerId
    events: list[Event] = Field(
        description="The customer's events. An empty list scores a customer with no history."
    )


class ScoreEventsRequest(BaseModel):
    """Customers with their raw events, scored at one point in time."""

    customers: list[CustomerEvents] = Field(min_length=1)
    as_of: UtcTime | None = Field(
        default=None,
        description="Score as of this time (only events strictly before it are used). "
        "Default: now. " + _TIME_DOC,
    )


FeatureValue = Annotated[FiniteFloat | None, BeforeValidator(_number)]


class CustomerFeatures(BaseModel):
    """A customer and a precomputed feature vector (``GET /v1/model`` lists the names)."""

    customer_id: CustomerId
    features: dict[str, FeatureValue] = Field(
        description="Feature name -> value; null means missing (NaN). Every feature of the "
        "model is required; extra names are ignored."
    )


class ScoreFeaturesRequest(BaseModel):
    """Customers with precomputed features."""

    customers: list[CustomerFeatures] = Field(min_length=1)


# -- responses ---------------------------------------------------------------------------


class Reason(BaseModel):
    """One feature's contribution to this customer's prediction (path attribution or
    TreeSHAP, as ``reasons_method`` of ``GET /v1/model`` says)."""

    feature: str
    value: float | None = Field(description="The feature's value (null: missing).")
    contribution: float = Field(
        description="Contribution to the calibrated logit (stage) or margin (churn); "
        "positive pushes towards the predicted stage / towards churn."
    )
    description: str


class Reasons(BaseModel):
    """Top features by absolute contribution, largest first."""

    stage: list[Reason] = Field(description="Towards the predicted stage's logit.")
    churn: list[Reason] = Field(description="Towards the churn margin.")


class NextBestAction(BaseModel):
    """What to do next, from the playbook entry for this stage and risk band."""

    action: str
    description: str


class CustomerValue(BaseModel):
    """A customer's value over the model's value horizon after as_of.

    The same object in scores (``POST /v1/scores``, as of the request's ``as_of``) and in
    score store lookups (as of the run's ``as_of``).
    """

    expected_purchases: float | None = Field(
        ge=0,
        description="Expected number of purchases within the horizon; null without a prediction.",
    )
    expected_spend: float | None = Field(
        ge=0,
        description="Expected spend within the horizon, in the currency of the event log's "
        "amounts; null without a prediction or when the log has no purchase amounts.",
    )
    next_purchase_date: date | None = Field(
        description="Expected date of the next purchase (YYYY-MM-DD, UTC); null without a "
        "prediction (a customer who never bought, or no purchase expected within three "
        "horizons), and always null from POST /v1/scores/features, which has no as_of to "
        "count the days from."
    )
    value_tier: str = Field(
        pattern=VALUE_TIER_PATTERN,
        description="Tier by predicted spend, fixed on the training population: top_1, "
        "top_5, top_10, top_25, top_50 (the top percent it falls in; the shares are the "
        "model's), rest, or unknown (no prediction, as for feature values no purchase "
        "history can have). Without purchase amounts in the "
        "training log the tiers rank expected purchases (value.tier_by of GET /v1/model).",
        examples=["top_5"],
    )
    horizon_days: int | None = Field(
        default=None,
        ge=1,
        description="Days after as_of that expected_purchases and expected_spend cover "
        "(the model's value horizon); always set in scores, null in a lookup when the "
        "store was not told it.",
    )


class Score(BaseModel):
    """The prediction for one customer."""

    customer_id: str
    stage: str
    stage_probabilities: dict[str, float]
    next_stage_probabilities: dict[str, float] | None = Field(
        default=None,
        description="Probability of each stage horizon_days ahead (GET /v1/model), from the "
        "model's latent-stage forecast; null when the model has no forecast or the "
        "customer has no history before as_of.",
    )
    churn_probability: float = Field(ge=0, le=1)
    churn_risk: Literal["low", "medium", "high"]
    reasons: Reasons
    next_best_action: NextBestAction
    model_name: str
    model_version: str
    value: CustomerValue | None = Field(
        default=None,
        description="The customer's value over the model's value horizon (GET /v1/model, "
        "value.horizon_days) after as_of; null when the model has no value model.",
    )


class ScoreResponse(BaseModel):
    """Scores in request order, all from one model version."""

    model_name: str
    model_version: str
    as_of: datetime | None = Field(description="The time scored at (null for features).")
    scores: list[Score]


class RiskThresholds(BaseModel):
    """Churn probability bands: low below ``medium_from``, high from ``high_from``."""

    medium_from: float
    high_from: float


class ValueInfo(BaseModel):
    """The model's customer value model: what the ``value`` of a score means."""

    horizon_days: int = Field(
        ge=1,
        description="Days after as_of that expected_purchases and expected_spend cover "
        "(the value horizon; independent of the churn horizon_days).",
    )
    tiers: list[str] = Field(
        description="The value_tier labels from the top down (top_1, top_5, ..., rest); a "
        "score may also say unknown (no prediction).",
        examples=[["top_1", "top_5", "top_10", "top_25", "top_50", "rest"]],
    )
    tier_shares: list[float] = Field(
        description="Share of the training population each top tier was cut at (0.01 is "
        "top_1), one per label before rest."
    )
    tier_thresholds: list[float] = Field(
        description="The lowest value (tier_by) that reaches each top tier, one per label "
        "before rest, fixed on the training population."
    )
    tier_by: Literal["expected_spend", "expected_purchases"] = Field(
        description="What the tiers rank: expected_spend, or expected_purchases when the "
        "training log had no purchase amounts."
    )
    predicts_spend: bool = Field(
        description="Whether expected_spend is predicted (false: the training log had no "
        "purchase amounts and expected_spend is always null)."
    )
    heads: list[Literal["purchases", "spend"]] = Field(
        description="Learned heads used instead of the BG/NBD (purchases) and Gamma-Gamma "
        "(spend) baselines; kept at training only when they beat the baselines on held-out "
        "customers. Empty: baselines only. The next purchase date always comes from BG/NBD."
    )


class ModelInfo(BaseModel):
    """The model being served."""

    name: str
    version: str
    uri: str
    run_id: str | None
    stages: list[str]
    feature_count: int
    feature_names: list[str]
    horizon_days: int = Field(
        description="Churn horizon; also the horizon of next_stage_probabilities."
    )
    forecasts_stages: bool = Field(
        default=False,
        description="Whether scores carry next_stage_probabilities (the model has a "
        "latent-stage forecast, horizon_days ahead).",
    )
    risk_thresholds: RiskThresholds
    reasons_method: Literal["path", "treeshap"] = Field(
        description="How the reasons' contributions are attributed: path attributions "
        "or exact TreeSHAP (setting LIFECYCLE_REASONS_METHOD)."
    )
    value: ValueInfo | None = Field(
        default=None,
        description="The customer value model behind the scores' value; null when the "
        "model has none (scores then carry value null).",
    )
    loaded_at: datetime


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "no_model", "draining"]
    model_version: str | None = None


class ReloadResult(BaseModel):
    changed: bool
    previous_version: str | None
    version: str | None


class ErrorBody(BaseModel):
    """Error responses other than 422."""

    detail: str


class FieldError(BaseModel):
    """One invalid field of a 422 answer."""

    type: str = Field(description="The kind of error (pydantic's error type).")
    loc: list[str | int] = Field(description="Where: 'body', then keys and list indices.")
    msg: str = Field(description="What is wrong; for event rows it starts with the reason.")
    input: str | int | float | bool | None = Field(
        default=None,
        description="The offending value when it is short and plain: strings are cut to "
        f"{_ECHO_CHARS} characters; lists, objects, non-finite and very large numbers "
        "are left out.",
    )


class ValidationErrorBody(BaseModel):
    """A 422 answer: every invalid field (up to a bound), each with its location."""

    detail: list[FieldError]


#: A 422 answer lists at most this many errors.
MAX_FIELD_ERRORS = 50
_OMIT = object()


def field_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as JSON-safe :class:`FieldError` dicts, bounded.

    The input is not echoed in full: a client's body may carry anything (NaN, huge
    numbers or strings, deep structures), and echoing it could not be serialised as
    JSON, or would send megabytes back. At most 50 errors are listed.
    """
    out: list[dict[str, Any]] = []
    for error in errors[:MAX_FIELD_ERRORS]:
        item: dict[str, Any] = {
            "type": str(error.get("type", "value_error")),
            "loc": [p if isinstance(p, int) else _cut(str(p)) for p in error.get("loc", ())],
            "msg": _cut(str(error.get("msg", "")), 500),
        }
        echoed = _echo(error.get("input"))
        if echoed is not _OMIT:
            item["input"] = echoed
        out.append(item)
    return out


def _cut(text: str, limit: int = _ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _echo(value: object) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, int):
        return value if abs(value) < 2**53 else _OMIT
    if isinstance(value, float):
        return value if math.isfinite(value) else _OMIT
    return _OMIT


def error_doc(description: str, **headers: str) -> dict[str, Any]:
    """An OpenAPI ``responses=`` entry with the :class:`ErrorBody` model."""
    doc: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        doc["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return doc
