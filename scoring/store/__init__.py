"""The score store: batch runs kept in SQLite or PostgreSQL for lookups by id, segments
and transitions (docs/api.md, docs/cli.md).

:mod:`.schema` holds the tables, the connection and the migrations; :mod:`.writer`
writes a run; :mod:`.queries` reads; :mod:`.export` writes a segment to a file;
:mod:`.maintenance` vacuums the store while it serves.
"""

from customer_lifecycle.scoring.store.schema import SCHEMA_VERSION, VALUE_COLUMNS, open_store
from customer_lifecycle.scoring.store.writer import DEFAULT_KEEP_RUNS, RunInfo, write_run

__all__ = [
    "DEFAULT_KEEP_RUNS",
    "SCHEMA_VERSION",
    "VALUE_COLUMNS",
    "RunInfo",
    "open_store",
    "write_run",
]
