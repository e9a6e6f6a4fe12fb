"""Batch scoring from an event log to a table of the SPEC §7 columns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from features.contract import parse_as_of
from features.engine import build_features
from features.events import LoadSummary, load_events, load_mapping
from features.io import table_format, write_table
from scoring.pyfunc import load_bundle


def score_file(
    events_path: str | Path,
    *,
    model: str,
    as_of: object,
    out: str | Path,
    mapping: str | None = None,
    unknown_events: str = "strict",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, LoadSummary]:
    """Score every customer with an event before ``as_of`` and write ``out`` atomically.

    Columns: ``customer_id, stage, churn_probability, churn_risk, p_<stage>...``.
    """
    table_format(out)
    cutoff = parse_as_of(as_of)
    bundle = load_bundle(model)
    events, summary = load_events(
        events_path,
        mapping=load_mapping(mapping),
        unknown_events=unknown_events,  # type: ignore[arg-type]
    )
    feats = build_features(events, as_of=cutoff, definition=bundle.definition, progress=progress)
    scores = bundle.predict_features(feats)
    write_table(scores, out)
    return scores, summary
