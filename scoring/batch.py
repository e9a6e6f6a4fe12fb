"""Batch scoring from an event log to a table of the docs/cli.md columns, in bounded memory.

:func:`score_file` (``lifecycle score``) never holds the whole log: it runs
:func:`features.streaming.stream_chunks`, which spills the log to disk by customer and
hands over one chunk of whole customers' validated events at a time; each chunk's
features are built with the model's own definition and latent model
(:meth:`scoring.bundle.ModelBundle.build_features`: every feature, the latent ones
included, depends on the customer's own events only) and scored
(:meth:`scoring.bundle.ModelBundle.predict_features`), and the scores are appended to a
temporary output file. Every value is bit for bit what the in-memory path (load the
log, build features, score) gives.

The output and the quarantine file are renamed into place only when everything has
succeeded; on any error, ``KeyboardInterrupt`` included, no output is left behind (see
:mod:`features.streaming` for the passes, the files and peak memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of
from customer_lifecycle.features.mapping import EventMapping
from customer_lifecycle.features.streaming import (
    DEFAULT_CHUNK_CUSTOMERS,
    Progress,
    StreamSummary,
    stream_chunks,
)
from customer_lifecycle.scoring.bundle import RISK_BANDS, ModelBundle
from customer_lifecycle.scoring.pyfunc import load_bundle


@dataclass
class BatchSummary(StreamSummary):
    """What one :func:`score_file` run did.

    Attributes
    ----------
    load
        Rows read, kept and quarantined (by reason), and where the quarantine file is.
    customers
        Customers scored (those with at least one event before ``as_of``).
    out
        The output file.
    partitions
        Spill files the log was partitioned into.
    seconds
        Wall time of the run.
    risk_bands
        Customers per churn risk band.
    """

    risk_bands: dict[str, int] = field(default_factory=dict)

    def _note(self) -> str:
        if not self.risk_bands:
            return ""
        bands = ", ".join(f"{b} {self.risk_bands.get(b, 0):,}" for b in RISK_BANDS)
        return f" (risk: {bands})"


def score_file(
    events_path: str | Path,
    *,
    model: str | Path | ModelBundle,
    as_of: object,
    out: str | Path,
    mapping: str | Path | EventMapping | None = None,
    unknown_events: str = "strict",
    progress: Progress | None = None,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    quarantine_path: str | Path | None = None,
    partitions: int | None = None,
    return_scores: bool = True,
) -> tuple[pd.DataFrame | None, BatchSummary]:
    """Score every customer with an event before ``as_of``; write ``out`` atomically.

    Columns: ``customer_id, stage, churn_probability, churn_risk, p_<stage>...`` and,
    when the model has a stage forecast, ``p_next_<stage>...`` (the probability of each
    stage ``horizon_days`` ahead), one row per customer, in chunks (sorted by
    ``customer_id`` within each chunk).

    Parameters
    ----------
    events_path
        Event log: ``.csv``, ``.csv.gz``, ``.parquet``/``.pq`` (file or directory),
        ``.jsonl``/``.ndjson``. Read in batches, never whole.
    model
        Model URI (``models:/NAME@champion``), MLflow model or bundle directory, or a
        loaded :class:`~scoring.bundle.ModelBundle`. Features are built with the
        model's own definition.
    as_of
        Score as of this time (ISO 8601; naive is UTC); only earlier events count.
    out
        Output table, ``.parquet`` or ``.csv``/``.csv.gz``.
    mapping, unknown_events
        As for :func:`features.events.load_events`.
    progress
        ``progress(phase, done, total)``; see :data:`features.streaming.Progress`.
    chunk_customers
        About this many customers are validated, featurized and scored at once (at
        least one spill file's worth): the knob for peak memory.
    quarantine_path
        Where bad rows go (default ``<stem>.quarantine.csv`` beside the log); written
        only when a row is quarantined, in source row order. For speed, only the
        columns the event contract reads are kept (under their source names).
    partitions
        Number of spill files; by default one per
        :data:`features.spill.ROWS_PER_PARTITION` rows.
    return_scores
        Also return every score as one frame (memory then grows with the number of
        customers); the CLI passes ``False``.

    Returns
    -------
    scores : pandas.DataFrame or None
        The rows written to ``out`` (``None`` unless ``return_scores``).
    summary : BatchSummary
        Row counts, customers, risk bands.

    Raises
    ------
    ValueError
        On a bad option, an unreadable or empty log, a missing required column or an
        unknown model; nothing is written.
    """
    cutoff = parse_as_of(as_of)
    bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
    bands = dict.fromkeys(RISK_BANDS, 0)

    def score(events: pd.DataFrame) -> pd.DataFrame:
        scores = bundle.predict_features(bundle.build_features(events, as_of=cutoff), as_of=cutoff)
        for band, n in scores["churn_risk"].value_counts().items():
            bands[str(band)] += int(n)
        return scores

    scores, streamed = stream_chunks(
        events_path,
        out=out,
        apply=score,
        empty=_empty_scores(bundle),
        mapping=mapping,
        unknown_events=unknown_events,
        progress=progress,
        chunk_customers=chunk_customers,
        quarantine_path=quarantine_path,
        partitions=partitions,
        keep=return_scores,
    )
    summary = BatchSummary(
        **{f.name: getattr(streamed, f.name) for f in fields(streamed)}, risk_bands=bands
    )
    return scores, summary


def _empty_scores(bundle: ModelBundle) -> pd.DataFrame:
    text = (CUSTOMER_ID, "stage", "churn_risk", "next_purchase_date", "value_tier")
    columns = [CUSTOMER_ID, *bundle.output_columns]
    return pd.DataFrame({c: pd.Series(dtype="str" if c in text else "float64") for c in columns})


__all__ = ["BatchSummary", "score_file"]
