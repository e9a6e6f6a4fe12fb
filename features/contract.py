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

import pandas as pd

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
        out[TIMESTAMP] = parse_timestamps(events[TIMESTAMP])
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
    """Parse ISO 8601 times to ``datetime64[ns, UTC]``; naive times are taken as UTC.

    Mixed offsets (``+02:00`` beside ``Z``) are converted to the same instant in UTC.
    Unparseable values become ``NaT`` so the caller can quarantine them.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    # pandas may parse at a coarser unit; times outside the nanosecond range
    # (before 1677 or after 2262) cannot be represented and count as unparseable.
    lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    parsed = parsed.where((parsed >= lo) & (parsed <= hi))
    return parsed.astype("datetime64[ns, UTC]")


def parse_as_of(value: object) -> pd.Timestamp:
    """Parse one ``as_of`` time (ISO 8601 string or timestamp) to a UTC ``Timestamp``.

    Raises ``ValueError`` with a one-line message when ``value`` is not a time.
    """
    if value is None:
        raise ValueError("as_of is required: features never default to 'now'")
    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"as_of {value!r} is not an ISO 8601 time") from exc
    if ts is pd.NaT:
        raise ValueError(f"as_of {value!r} is not an ISO 8601 time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
