"""Logs for the eligibility tests: simulated shops of a few hundred customers, and edge cases.

Every log is a folder with ``events.parquet`` and ``labels.csv`` (``customer_id, stage,
as_of``), as :func:`customer_lifecycle.simulator.write_dataset` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from customer_lifecycle.simulator import write_dataset

SEED = 3
AS_OF = "2024-12-31"
SIZES = (100, 300, 600)


def simulated(root: Path, customers: int) -> Path:
    """A simulated shop (one snapshot at AS_OF, 90-day horizon), with its metadata."""
    out = root / f"sim-{customers}"
    write_dataset(out, customers=customers, seed=SEED, as_of=[AS_OF])
    return out


def metadata(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "metadata.json").read_text()))


def edge_cases(root: Path, base: Path) -> dict[str, Path]:
    """Variants of the simulated log ``base`` (written without simulator metadata).

    * ``no-stage``: the label file has no row of stage 'advocacy';
    * ``late-as-of``: the label file's as_of lies after the log ends;
    * ``no-purchases``: the log has no purchase (nor refund) events at all;
    * ``all-churned``: no labelled customer has an event after the snapshot (one
      unlabelled customer keeps the log running to its usual end, so that the churn
      window is observable).
    """
    events = pd.read_parquet(base / "events.parquet")
    labels = pd.read_csv(base / "labels.csv", dtype=str)
    snapshot = pd.Timestamp(AS_OF, tz="UTC")
    before = events[events["timestamp"] < snapshot]
    keeper = before.iloc[:1].assign(
        customer_id="unlabelled-keeper", timestamp=events["timestamp"].max()
    )
    cases = {
        "no-stage": (events, labels[labels["stage"] != "advocacy"]),
        "late-as-of": (events, labels.assign(as_of="2025-06-30")),
        "no-purchases": (events[~events["event_type"].isin(["purchase", "refund"])], labels),
        "all-churned": (pd.concat([before, keeper], ignore_index=True), labels),
    }
    out = {}
    for name, (ev, lab) in cases.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        ev.to_parquet(folder / "events.parquet", index=False)
        lab.to_csv(folder / "labels.csv", index=False)
        out[name] = folder
    return out
