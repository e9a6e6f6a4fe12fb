"""Writing tables safely: by extension, atomically (no partial file after a failure)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

TABLE_FORMATS = (".parquet", ".csv")


def table_format(path: str | Path) -> str:
    """Return ``"parquet"`` or ``"csv"`` from the file name, or raise ``ValueError``."""
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ValueError(f"cannot tell the format of {path}: use a .parquet or .csv file name")


def write_table(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write ``frame`` to ``path`` (Parquet or CSV by extension), atomically.

    The table is written to a temporary file in the same directory and renamed over
    ``path`` only once complete, so an interrupted run never leaves a partial file.
    """
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "parquet":
            frame.to_parquet(tmp, index=index)
        else:
            # the temporary name hides the extension, so say the compression outright
            gz = str(path).lower().endswith(".gz")
            frame.to_csv(tmp, index=index, compression="gzip" if gz else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
