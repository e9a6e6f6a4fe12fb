"""Output table formats, told from the file name (the writers are in ``features.sink``)."""

from __future__ import annotations

from pathlib import Path

TABLE_FORMATS = (".parquet", ".csv")


def table_format(path: str | Path) -> str:
    """Return ``"parquet"`` or ``"csv"`` from the file name, or raise ``ValueError``."""
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ValueError(f"cannot tell the format of {path}: use a .parquet or .csv file name")
