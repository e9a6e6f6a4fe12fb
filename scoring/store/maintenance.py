"""Vacuuming the score store while it serves: space freed by removed runs is given back,
and the planner's statistics refreshed.

On SQLite :func:`vacuum` runs ``VACUUM`` and then checkpoints the write-ahead log. In WAL
mode ``VACUUM`` is an ordinary write transaction: readers keep reading the snapshot they
began with and never wait; writers queue behind it (``busy_timeout``, 30 s). The
checkpoint copies the compacted pages back into the database file and truncates the log
when no reader still holds an older snapshot; otherwise it copies what it can and the log
is reused by the next write. On PostgreSQL it runs ``VACUUM (ANALYZE)`` on the store's
tables, which takes no lock that reads or writes wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from customer_lifecycle.scoring.store.schema import (
    BUSY_TIMEOUT_MS,
    first_line,
    read_version,
    runs,
    scores,
    sqlite_path,
    store_meta,
)
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

#: How long the log checkpoint waits for readers of older snapshots before it settles
#: for copying back what they allow.
CHECKPOINT_WAIT_MS = 1000


@dataclass(frozen=True)
class VacuumResult:
    """What :func:`vacuum` did. Sizes (bytes, database file plus write-ahead log) are for
    SQLite only; ``log_truncated`` is False when a reader kept the log from being
    truncated (SQLite) and None on PostgreSQL."""

    size_before: int | None
    size_after: int | None
    log_truncated: bool | None
    seconds: float


def vacuum(engine: Engine) -> VacuumResult:
    """Compact the store and refresh its statistics; lookups keep answering meanwhile.

    Parameters
    ----------
    engine
        From :func:`scoring.store.schema.open_store` or ``create_store_engine``.

    Raises
    ------
    ValueError
        One line, when the database holds no score store or the database refuses (a
        writer holding the lock beyond the busy timeout, say).
    """
    start = time.perf_counter()
    errors: tuple[type[Exception], ...] = (SQLAlchemyError, *_driver_errors(engine))
    try:
        with engine.connect() as conn:
            if read_version(conn) is None:
                raise ValueError("the database holds no score store: nothing to vacuum")
        if engine.dialect.name == "sqlite":
            path = sqlite_path(engine.url.render_as_string(hide_password=False))
            before = _size(path)
            truncated = _vacuum_sqlite(engine)
            return VacuumResult(before, _size(path), truncated, time.perf_counter() - start)
        _vacuum_server(engine)
    except errors as exc:
        raise ValueError(f"cannot vacuum the score store: {first_line(exc)}") from None
    return VacuumResult(None, None, None, time.perf_counter() - start)


def _vacuum_sqlite(engine: Engine) -> bool:
    # On the driver's own connection: it is in autocommit mode, while SQLAlchemy's
    # ``begin`` would emit a BEGIN that VACUUM refuses to run inside.
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("VACUUM")
            # Truncating the log waits for readers of older snapshots, holding the write
            # lock meanwhile: wait briefly, so a long reader (an export) holds up neither
            # this command nor the writers queued behind it.
            cursor.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            busy = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # a reader still holds an older snapshot: copy back what it allows
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()
    return not busy


def _vacuum_server(engine: Engine) -> None:
    tables = ", ".join(t.name for t in (store_meta, runs, scores))
    with engine.connect() as conn:
        # VACUUM cannot run inside a transaction block
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"VACUUM (ANALYZE) {tables}")


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    wal = path.with_name(path.name + "-wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())


def _driver_errors(engine: Engine) -> tuple[type[Exception], ...]:
    """The driver's own errors: the SQLite vacuum runs on the driver's connection."""
    dbapi: Any = engine.dialect.loaded_dbapi
    error: type[Exception] = dbapi.Error
    return (error,)


__all__ = ["VacuumResult", "vacuum"]
