"""The summary of one event load: rows read, kept and quarantined, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadSummary:
    """What happened to the rows of one load.

    Attributes
    ----------
    source
        The file (or ``"<frame>"``) the events came from.
    rows_read
        Data rows read; always ``rows_kept + sum(quarantined.values())``.
    rows_kept
        Rows in the returned canonical frame.
    quarantined
        Quarantine reason -> row count, only reasons that occurred.
    quarantine_path
        Where the quarantined rows were written, or ``None`` when none were.
    unknown_event_types
        Under the lenient policy: event types outside the canonical list that were kept
        under their own name -> row count.
    absent_columns
        Optional contract column -> source column the mapping names for it but the
        file does not have (the column is then left out of the frame).
    """

    source: str
    rows_read: int
    rows_kept: int
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine_path: Path | None = None
    unknown_event_types: dict[str, int] = field(default_factory=dict)
    absent_columns: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready values."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "quarantined": dict(self.quarantined),
            "quarantine_path": None if self.quarantine_path is None else str(self.quarantine_path),
            "unknown_event_types": dict(self.unknown_event_types),
            "absent_columns": dict(self.absent_columns),
        }

    def __str__(self) -> str:
        total = sum(self.quarantined.values())
        line = f"read {self.rows_read:,} rows from {self.source}: kept {self.rows_kept:,}"
        line += f", quarantined {total:,}"
        if total:
            line += f" ({_counts(self.quarantined)})"
        if self.quarantine_path is not None:
            line += f" -> {self.quarantine_path}"
        if self.unknown_event_types:
            kept = sum(self.unknown_event_types.values())
            line += f"; kept {kept:,} of unknown type ({_counts(self.unknown_event_types)})"
        for column, source in self.absent_columns.items():
            line += f"; no column {source!r} for {column}"
        return line


def _counts(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name}: {n:,}" for name, n in ordered)
