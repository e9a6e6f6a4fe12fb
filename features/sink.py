"""Writing a table chunk by chunk, atomically: no partial file after a failure.

:class:`TableAppender` is the streaming counterpart of :func:`write_atomic`:
rows arrive in chunks and go to a hidden temporary file beside the target, which is
renamed over the target only by :meth:`TableAppender.commit`. Until then the target path
is untouched (an earlier file there survives a failed run). The file then gets the mode a
plain ``open()`` would have given it under the current umask (typically ``0644``), not
the owner-only ``0600`` of the temporary file. :func:`write_atomic` writes a whole
frame the same way.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from customer_lifecycle.features.io import table_format


class TableAppender:
    """Append frames to a table in a hidden temporary file; rename it into place at commit.

    Parquet through one ``ParquetWriter`` (one row group per append), CSV through one
    text stream (gzip for ``.csv.gz``) with the header once. CSV rows end in CRLF (RFC
    4180, the csv module's own default): the writer then quotes every cell that holds a
    line break, a lone carriage return included, so any cell reads back in its row.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fmt = table_format(path)
        self._mode = creation_mode()
        self._tmp: Path | None = None
        self._writer: Any = None
        self._file: Any = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        os.close(fd)
        self._tmp = Path(tmp)
        if self.fmt == "csv":
            gz = self.path.name.lower().endswith(".gz")
            self._file = (
                gzip.open(tmp, "wt", newline="") if gz else open(tmp, "w", newline="")  # noqa: SIM115
            )

    def append(self, frame: pd.DataFrame) -> None:
        if self._tmp is None:
            self._open()
        if self.fmt == "csv":
            frame.to_csv(
                self._file, index=False, header=self._writer is None, lineterminator="\r\n"
            )
            self._writer = True
        else:
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
            self._writer.write_table(table.cast(self._writer.schema))

    def _close(self) -> None:
        if self.fmt == "parquet" and self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None

    def commit(self, *, empty: pd.DataFrame | None = None) -> None:
        """Finish the file and rename it over :attr:`path` (``empty``: header when no rows)."""
        if self._tmp is None:
            if empty is None:
                return
            self.append(empty)
        self._close()
        assert self._tmp is not None
        os.chmod(self._tmp, self._mode)
        os.replace(self._tmp, self.path)
        self._tmp = None

    def discard(self) -> None:
        """Remove the temporary file; the target path is left as it was."""
        try:
            self._close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                self._tmp = None


def write_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` (Parquet or CSV by extension) complete or not at all."""
    appender = TableAppender(Path(path))
    try:
        appender.append(frame)
        appender.commit()
    except BaseException:
        appender.discard()
        raise
    return appender.path


def creation_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask."""
    try:
        # Linux says the umask without changing it (no window for other threads)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


__all__ = ["TableAppender", "creation_mode", "write_atomic"]
