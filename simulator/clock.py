"""The simulator's clock: whole UTC days, times as integer microseconds since the epoch."""

from __future__ import annotations

import pandas as pd
from customer_lifecycle.features.contract import parse_as_of

#: Microseconds in one day.
DAY_US = 86_400_000_000


def parse_midnight(value: object) -> pd.Timestamp:
    """Parse an ``as_of`` time that must fall on midnight UTC.

    The model runs in whole days, so an ``as_of`` inside a day would split that day's
    events; the simulator and the oracle refuse it with a one-line ``ValueError``.
    """
    ts = parse_as_of(value)
    if ts != ts.normalize():
        raise ValueError(
            f"as_of {value!s} is not at midnight UTC; the simulator runs in whole days"
        )
    return ts


def to_us(ts: pd.Timestamp) -> int:
    """Microseconds since the Unix epoch of a UTC timestamp."""
    return int(ts.value // 1000)  # Timestamp.value is in nanoseconds whatever the unit
