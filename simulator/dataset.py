"""The oracle's predictions for a dataset written by :func:`write_dataset`.

Training takes reference predictions as a plain frame and never looks for simulator
files itself; this module is what turns a simulated dataset into that frame, for the
command line, the benchmarks and the notebooks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of, parse_timestamps
from customer_lifecycle.features.events import load_events
from customer_lifecycle.simulator.config import scenario_from_dict
from customer_lifecycle.simulator.oracle import posterior

METADATA = "metadata.json"


def dataset_oracle(
    events_path: str | Path,
    *,
    horizon_days: int | None = None,
    as_of: Sequence[object] = (),
) -> pd.DataFrame | None:
    """Bayes-optimal predictions for a simulated event log, or ``None`` for any other.

    Parameters
    ----------
    events_path
        The events file of a dataset written by :func:`write_dataset`, or its folder.
        A log counts as simulated when the simulator's ``metadata.json`` lies beside it.
    horizon_days
        Churn window of ``churn_probability``; default the dataset's own.
    as_of
        Snapshot times to predict at besides the dataset's own; times inside a day
        are skipped (the oracle runs in whole days).

    Returns
    -------
    DataFrame or None
        ``customer_id``, ``as_of`` (UTC), ``p_<stage>`` per stage of the scenario and
        ``churn_probability`` (no event at all in the horizon), one row per customer
        with an event before each time. The dataset's ``oracle.csv`` is reused when it
        was written for these very events and horizon; other times are computed.
    """
    path = Path(events_path)
    folder = path if path.is_dir() else path.parent
    meta = _simulator_metadata(folder / METADATA)
    if meta is None:
        return None
    own_events = folder / meta["files"]["events"]
    if path.is_dir():
        path = own_events
    horizon = int(meta["horizon_days"]) if horizon_days is None else horizon_days
    times = _midnights([*meta["as_of"], *as_of])

    parts: list[pd.DataFrame] = []
    saved = folder / meta["files"].get("oracle", "-")
    if saved.is_file() and path == own_events and horizon == meta["horizon_days"]:
        frame = pd.read_csv(saved, dtype={CUSTOMER_ID: str})
        frame["as_of"] = parse_timestamps(frame["as_of"])
        frame = frame[frame["as_of"].isin(times)]
        parts.append(frame)
        times = [t for t in times if t not in set(frame["as_of"])]
    if times:
        scenario = scenario_from_dict(meta["parameters"], source=str(folder / METADATA))
        events, _ = load_events(path)
        parts += [posterior(events, scenario, t, horizon_days=horizon) for t in times]
    out = pd.concat(parts, ignore_index=True)
    out["as_of"] = parse_timestamps(out["as_of"])
    return out.sort_values(["as_of", CUSTOMER_ID], ignore_index=True)


def _simulator_metadata(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if isinstance(meta, dict) and meta.get("generator") == "simulator" else None


def _midnights(values: Sequence[object]) -> list[pd.Timestamp]:
    times = {parse_as_of(v) for v in values}
    return sorted(t for t in times if t == t.normalize())
