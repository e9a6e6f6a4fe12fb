"""The event data contract (docs/events.md): column names, canonical event types, dtypes.

A *canonical event frame* is what every loader returns and every engine reads:

============  =====================================  ========
column        dtype                                  required
============  =====================================  ========
customer_id   ``category`` of strings                yes
timestamp     ``datetime64[ns, UTC]``                yes
event_type    ``category`` of canonical event names  yes
amount        ``float64`` (NaN when absent)          no
channel       ``category`` of strings                no
============  =====================================  ========

Categoricals keep a 10-million-row log in a few hundred megabytes and give the
feature engine integer codes without hashing strings again.
"""

from __future__ import annotations

import calendar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
AMOUNT = "amount"
CHANNEL = "channel"

REQUIRED_COLUMNS: tuple[str, ...] = (CUSTOMER_ID, TIMESTAMP, EVENT_TYPE)
OPTIONAL_COLUMNS: tuple[str, ...] = (AMOUNT, CHANNEL)

#: Canonical event types (docs/events.md). Mapping files translate other vocabularies onto these.
CANONICAL_EVENT_TYPES: tuple[str, ...] = (
    "ad_click",
    "social_visit",
    "search_visit",
    "page_view",
    "content_view",
    "product_view",
    "search",
    "comparison",
    "wishlist_add",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
    "purchase",
    "refund",
    "onboarding_step",
    "email_open",
    "email_click",
    "newsletter_signup",
    "appointment_booked",
    "demo_request",
    "login",
    "support_ticket",
    "survey_response",
    "promo_redeemed",
    "review",
    "referral",
    "social_share",
    "loyalty_join",
    "unsubscribe",
)

#: Event types whose ``amount`` is money that must not be negative.
MONETARY_EVENT_TYPES: tuple[str, ...] = ("purchase", "refund")

# -- what a time text is ------------------------------------------------------------
# One definition for event files, the HTTP API and every other reader of time texts:
# an ISO 8601 calendar date, optionally with a time of day (hh:mm, then optionally
# :ss, then optionally a fraction of up to nine digits) after "T" or a space, then
# optionally an offset ("Z", +hh:mm or +hhmm, at most 18 hours: java.time's and so
# Spark's bound; real zones lie within -12 and +14 hours); without an offset the time
# is UTC. The day must exist (February 29 in leap years only) and the year lie in
# 1678-2261, so that any offset keeps the instant inside the range of int64
# nanosecond times (1677-09-21 to 2262-04-11). Everything else is not a time: "now"
# and "today" (they depend on when the file is read), "2024/06/01", basic forms
# ("20240601"), reduced precision ("2024", "2024-06", hours alone), "+02" offsets,
# zone names, lower-case "t"/"z", decimal commas, week and ordinal dates, blanks
# around the text, more than nine fraction digits, and epoch numbers (a file says its
# epoch unit in its mapping instead). The pattern says "[0-9]", not "\d" (which in
# Python's re matches any Unicode digit), so Python, RE2 (pyarrow) and JSON Schema's
# ECMA dialect read it alike. Its "$" is the end of the text in RE2 and ECMA; Python
# callers use ``fullmatch`` (Python's and Java's "$" also match before a final "\n").
_YEAR = r"(167[89]|16[89][0-9]|1[7-9][0-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9]|226[01])"
_LEAP_YEAR = "(" + "|".join(str(y) for y in range(1678, 2262) if calendar.isleap(y)) + ")"
_DATE = (
    f"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    f"|02-(0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?"
_OFFSET = r"(Z|[+-]((0[0-9]|1[0-7]):?[0-5][0-9]|18:?00))"

#: The texts that are times (docs/events.md, "Times"): see the comment above.
TIMESTAMP_PATTERN = f"^{_DATE}([T ]{_CLOCK}{_OFFSET}?)?$"

#: :data:`TIMESTAMP_PATTERN` in words, for error messages and API documentation.
TIMESTAMP_FORMS = (
    "ISO 8601 time: YYYY-MM-DD, optionally with Thh:mm[:ss[.fffffffff]] (T or a space) "
    "and an offset (Z, +hh:mm, +hhmm, up to 18:00); without an offset it is UTC. Years "
    "1678-2261 (the range of nanosecond times)."
)


def is_timestamp_text(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a boolean mask: which cells of a string column are times.

    A cell is a time when it matches :data:`TIMESTAMP_PATTERN` in full; a null cell is
    not. The match runs in pyarrow (RE2), one pass over the column, no Python per row.
    """
    matched = pc.fill_null(pc.match_substring_regex(values, TIMESTAMP_PATTERN), False)
    return matched.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def is_canonical_frame(events: pd.DataFrame) -> bool:
    """Return whether ``events`` already has the canonical dtypes listed above."""
    if not all(c in events.columns for c in REQUIRED_COLUMNS):
        return False
    ts = events[TIMESTAMP].dtype
    return (
        isinstance(events[CUSTOMER_ID].dtype, pd.CategoricalDtype)
        and isinstance(events[EVENT_TYPE].dtype, pd.CategoricalDtype)
        and isinstance(ts, pd.DatetimeTZDtype)
        and str(ts.tz) == "UTC"
    )


def to_canonical_frame(events: pd.DataFrame) -> pd.DataFrame:
    """Return a canonical copy of an already clean event frame.

    This only converts dtypes; it neither validates rows nor quarantines them (that is
    :func:`features.events.load_events`'s job). It raises ``ValueError`` naming the
    first missing required column, or the column whose values cannot be converted.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events are missing the required column {missing[0]!r}")
    if is_canonical_frame(events) and (
        AMOUNT not in events.columns or events[AMOUNT].dtype == "float64"
    ):
        return events
    out = pd.DataFrame(index=pd.RangeIndex(len(events)))
    out[CUSTOMER_ID] = pd.Categorical(events[CUSTOMER_ID].astype(str).to_numpy())
    try:
        # by position: the input's index may be anything (a filtered frame's, say)
        out[TIMESTAMP] = parse_timestamps(events[TIMESTAMP]).array
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"column 'timestamp' has values that are not ISO 8601 times: {exc}"
        ) from exc
    if out[TIMESTAMP].isna().any():
        raise ValueError("column 'timestamp' has missing or unparseable values")
    out[EVENT_TYPE] = pd.Categorical(events[EVENT_TYPE].astype(str).to_numpy())
    if AMOUNT in events.columns:
        out[AMOUNT] = pd.to_numeric(events[AMOUNT], errors="raise").astype("float64").to_numpy()
    if CHANNEL in events.columns:
        out[CHANNEL] = pd.Categorical(events[CHANNEL].to_numpy())
    return out


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Parse times to ``datetime64[ns, UTC]``; naive times are taken as UTC.

    A datetime column is converted. Anything else is read as text, and a cell is a
    time only if its text matches :data:`TIMESTAMP_PATTERN` (so ``"now"``, ``"2024"``
    or an epoch number are not). Mixed offsets (``+02:00`` beside ``Z``) are
    converted to the same instant in UTC. Values that are not times become ``NaT`` so
    the caller can quarantine them.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    # As text, as a CSV has it: date or datetime objects print in a form the pattern
    # accepts; numbers, booleans and missing values do not.
    text = values if isinstance(values.dtype, pd.StringDtype) else values.astype("str")
    is_time = is_timestamp_text(pa.array(text.array))
    # Every text the pattern admits is a real instant inside the nanosecond range (its
    # years are 1678-2261), so pandas can only fail on cells masked out here.
    parsed = pd.to_datetime(text.where(is_time), utc=True, errors="coerce", format="ISO8601")
    return parsed.astype("datetime64[ns, UTC]")


def parse_as_of(value: object) -> pd.Timestamp:
    """Parse one ``as_of`` time (ISO 8601 string or timestamp) to a UTC ``Timestamp``.

    Raises ``ValueError`` with a one-line message when ``value`` is not a time.
    """
    if value is None:
        raise ValueError("as_of is required: features never default to 'now'")
    if isinstance(value, str) and not is_timestamp_text(pa.array([value]))[0]:
        # the event contract's one definition of a time text: not "now", "today", "2024"
        raise ValueError(
            f"as_of {value!r} is not an ISO 8601 time such as 2024-12-31 or 2024-12-31T18:00Z"
        )
    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"as_of {value!r} is not an ISO 8601 time") from exc
    if ts is pd.NaT:
        raise ValueError(f"as_of {value!r} is not an ISO 8601 time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
