"""The score store's tables, its connection to a database and its schema migrations.

A store is any database SQLAlchemy reaches by URL: an embedded SQLite file by default (a
plain path is taken as one), PostgreSQL for several machines
(``postgresql+psycopg://user@host/db``; ``postgresql://`` is read as that). Its schema
version is kept in the store itself (table ``score_store_meta``). :func:`open_store`
creates a new store, migrates one written by an older version in one transaction, and
refuses a newer or unknown one with a one-line ``ValueError``.

SQLite runs in WAL mode: readers never wait for a writer, so lookups keep answering while
a run is written, pruned or the schema migrated; every write transaction begins with
``BEGIN IMMEDIATE`` so that two writers queue instead of failing on a lock upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from customer_lifecycle.scoring.bundle import VALUE_COLUMNS
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

#: How long a SQLite connection waits for a lock (a writer queued behind another).
BUSY_TIMEOUT_MS = 30_000

#: How long a PostgreSQL migration waits for a table lock before it gives up (a reader that
#: holds the table, an export say, would otherwise keep every lookup queued behind it).
MIGRATION_LOCK_TIMEOUT_MS = 5_000

#: The schema version this code writes and reads; older stores are migrated to it.
SCHEMA_VERSION = 4


#: The labels a value tier can have: ``top_<percent>`` (``top_1``, ``top_5``, ``top_2.5``
#: for configured shares), ``rest`` and ``unknown`` (no prediction).
VALUE_TIER_PATTERN = r"^(top_[0-9]+(\.[0-9]+)?|rest|unknown)$"

metadata = MetaData()

store_meta = Table(
    "score_store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)


def _run_columns() -> list[Column[Any]]:
    """The columns of ``score_runs`` as version 1 created them (fresh objects)."""
    return [
        Column("run_id", Integer, primary_key=True, autoincrement=True),
        Column("state", String(16), nullable=False),  # pending, complete
        Column("model_name", String, nullable=False),
        Column("model_version", String, nullable=False),
        Column("as_of", String(32), nullable=False),  # times are UTC text, see utc_text
        Column("customers", Integer, nullable=False),
        Column("risk_bands", Text, nullable=False),  # JSON {"low": n, "medium": n, "high": n}
        Column("stages", Text, nullable=False),  # JSON list, the model's stages in order
        Column("created_at", String(32), nullable=False),
        Column("completed_at", String(32)),
    ]


#: One row per batch run; readers only ever see runs whose ``state`` is ``complete``.
runs = Table(
    "score_runs",
    metadata,
    *_run_columns(),
    # days ahead that the value columns of the run's scores look (version 4); NULL when
    # the run has no value or its writer was not told the horizon
    Column("value_horizon_days", Integer),
)

#: ``score_runs`` as version 1 created it.
_runs_v1 = Table("score_runs", MetaData(), *_run_columns())


def _score_columns() -> list[Column[Any]]:
    """The columns of ``customer_scores`` as version 1 created them (fresh objects: a column
    belongs to one table)."""
    return [
        Column("customer_id", String, primary_key=True),
        Column("run_id", Integer, primary_key=True),
        Column("stage", String, nullable=False),
        Column("churn_probability", Float, nullable=False),
        Column("churn_risk", String(16), nullable=False),
        Column("stage_probabilities", Text, nullable=False),  # JSON {"stage": p, ...}
        Column("churn_rank", Float, nullable=False),  # percentile rank in the run, 0-100
        Column("stage_churn_rank", Float, nullable=False),  # ... within the predicted stage
        Column("stage_since", String(32), nullable=False),  # as_of of the run it entered its stage
        Column("risk_since", String(32), nullable=False),  # ... of the run it entered its band
    ]


#: One row per customer and run, clustered by customer (SQLite: WITHOUT ROWID) so a
#: lookup and a customer's history are one short range of the primary key.
scores = Table(
    "customer_scores",
    metadata,
    *_score_columns(),
    # JSON {"stage": p, ...} horizon_days ahead (version 3); NULL when the run's model has
    # no forecast or the customer had no history to forecast from
    Column("next_stage_probabilities", Text),
    # the customer's value over the run's value horizon (version 4), NULL when the run's
    # model has no value model; next_purchase_date is an ISO date "YYYY-MM-DD"
    Column("expected_purchases", Float),
    Column("expected_spend", Float),  # also NULL when the log has no purchase amounts
    Column("next_purchase_date", Text),
    Column("value_tier", Text),
    sqlite_with_rowid=False,
)

#: ``customer_scores`` as version 1 created it: migrations add the later columns, so a
#: store has the same shape whichever version created it.
_scores_v1 = Table("customer_scores", MetaData(), *_score_columns(), sqlite_with_rowid=False)


def _migration_1(conn: Connection) -> None:
    """The tables, and the index by run that writing, pruning and paging walk."""
    metadata.create_all(conn, tables=[store_meta])
    _runs_v1.create(conn, checkfirst=True)
    _scores_v1.create(conn, checkfirst=True)
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_customer_scores_run ON customer_scores (run_id, customer_id)"
    )


def _migration_2(conn: Connection) -> None:
    """Segments by stage and risk band read an index instead of the whole run."""
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_customer_scores_segment "
        "ON customer_scores (run_id, stage, churn_risk, customer_id)"
    )


def _migration_3(conn: Connection) -> None:
    """The stage forecast of each score (``next_stage_probabilities``, nullable).

    Adding a nullable column without a default rewrites no row on either database (SQLite
    edits the schema text; PostgreSQL only its catalog), so the migration is quick whatever
    the store's size. PostgreSQL holds an exclusive lock on the table until the migration
    commits: lookups wait for that moment rather than fail. To take it, the migration
    waits for the transactions reading the table to end, and lookups queue behind it; it
    gives up after :data:`MIGRATION_LOCK_TIMEOUT_MS` (the store stays at version 2; open
    it again later) rather than stall them behind a long export. Readers of an older
    version never select the column and keep working once it exists.
    """
    present = {c["name"] for c in inspect(conn).get_columns(scores.name)}
    if "next_stage_probabilities" not in present:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(MIGRATION_LOCK_TIMEOUT_MS)}")
        conn.exec_driver_sql("ALTER TABLE customer_scores ADD COLUMN next_stage_probabilities TEXT")


def _migration_4(conn: Connection) -> None:
    """The customer value of each score (:data:`VALUE_COLUMNS`, nullable) and the value
    horizon of each run (``score_runs.value_horizon_days``, nullable).

    As :func:`_migration_3`: nullable columns without a default rewrite no row, and on
    PostgreSQL the migration gives up after :data:`MIGRATION_LOCK_TIMEOUT_MS` rather than
    queue lookups behind a long reader. The scores of older runs read back with no value.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(MIGRATION_LOCK_TIMEOUT_MS)}")
    wanted = {
        scores.name: {
            "expected_purchases": "FLOAT",
            "expected_spend": "FLOAT",
            "next_purchase_date": "TEXT",
            "value_tier": "TEXT",
        },
        runs.name: {"value_horizon_days": "INTEGER"},
    }
    for table, columns in wanted.items():
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        for name, kind in columns.items():
            if name not in present:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


#: ``MIGRATIONS[v - 1]`` takes a store from version ``v - 1`` to ``v`` (0: empty database).
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def store_url(url: str | Path) -> str:
    """The SQLAlchemy URL of a ``--store`` value: a plain path is a SQLite file."""
    text = str(url)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def display_url(url: str | Path) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(store_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def sqlite_path(url: str | Path) -> Path | None:
    """The database file of a SQLite store URL (None for other databases and memory)."""
    parsed = make_url(store_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database)).resolve()


def create_store_engine(url: str | Path, *, pool_size: int = 5) -> Engine:
    """An engine on the store's database; SQLite connections in WAL mode.

    Raises ``ValueError`` for a URL SQLAlchemy cannot use (or a driver not installed).
    """
    full = store_url(url)
    try:
        parsed = make_url(full)
        if parsed.get_backend_name() == "sqlite":
            path = sqlite_path(full)
            if path is not None and not path.parent.is_dir():
                raise ValueError(f"cannot open score store {display_url(url)}: no such folder")
            engine = create_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=2 * pool_size,
                connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            )
            _sqlite_events(engine)
        else:
            # one snapshot per transaction, as SQLite gives: a page's queries agree
            engine = create_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=2 * pool_size,
                pool_pre_ping=True,
                isolation_level="REPEATABLE READ",
            )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ValueError(f"cannot use score store URL {display_url(url)}: {exc}") from None
    except ImportError as exc:
        raise ValueError(
            f"cannot use score store URL {display_url(url)}: its driver is not installed "
            f"({exc.name}); for PostgreSQL install customer-lifecycle[postgres]"
        ) from None
    return engine


def _sqlite_events(engine: Engine) -> None:
    """WAL, a busy timeout, and transactions SQLAlchemy begins itself (pysqlite does not).

    pysqlite's own transaction handling starts a transaction only before a write, so a
    page of reads would not see one snapshot; here the driver is in autocommit mode and
    SQLAlchemy's ``begin`` emits ``BEGIN`` (``BEGIN IMMEDIATE`` for :func:`writing`).
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA mmap_size=268435456")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on success (SQLite: ``BEGIN IMMEDIATE``)."""
    with engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin():
            yield conn


def read_version(conn: Connection) -> int | None:
    """The store's schema version; None for a database with no store in it.

    Raises ``ValueError`` when the database holds store tables without a readable version.
    """
    names = set(inspect(conn).get_table_names())
    if store_meta.name not in names:
        if names & {runs.name, scores.name}:
            raise ValueError(
                f"the database has score store tables but no {store_meta.name} table: "
                "it was not written by customer-lifecycle, or was damaged"
            )
        return None
    value = conn.execute(
        select(store_meta.c.value).where(store_meta.c.key == "schema_version")
    ).scalar()
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"the score store has an unknown schema version {value!r}") from None


def ensure_schema(engine: Engine, *, target: int = SCHEMA_VERSION) -> int:
    """Create or migrate the store to ``target`` in one transaction; the version before.

    Raises ``ValueError`` for a store newer than this code or of an unknown version.
    """
    # Read first, without the write lock: a store that is up to date opens while a run is
    # being written; the lock is taken, and the version read again, only to migrate.
    with engine.connect() as conn:
        current = read_version(conn)
    _check_version(current)
    if current == target:
        return target
    with writing(engine) as conn:
        version = read_version(conn)
        before = _check_version(version)
        for step in MIGRATIONS[before:target]:
            step(conn)
        if before < target:
            values = {"key": "schema_version", "value": str(target)}
            if version is None:
                conn.execute(store_meta.insert().values(**values))
            else:
                conn.execute(
                    store_meta.update()
                    .where(store_meta.c.key == "schema_version")
                    .values(value=str(target))
                )
    return before


def _check_version(version: int | None) -> int:
    before = 0 if version is None else version
    if before > SCHEMA_VERSION:
        raise ValueError(
            f"the score store has schema version {before}, newer than this "
            f"customer-lifecycle reads ({SCHEMA_VERSION}): upgrade customer-lifecycle"
        )
    if before < 0:
        raise ValueError(f"the score store has an unknown schema version {before}")
    return before


def utc_text(value: object) -> str:
    """A time as the store keeps it: UTC to the second, fixed width, so that the order of
    the texts is the order of the times (``2024-12-31T00:00:00Z``)."""
    import pandas as pd

    ts = pd.Timestamp(value)  # type: ignore[arg-type]
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def open_store(url: str | Path, *, pool_size: int = 5) -> Engine:
    """An engine on the store at ``url``, created or migrated to :data:`SCHEMA_VERSION`.

    Raises ``ValueError`` (one line) when the URL is unusable, the database cannot be
    reached, or the store is newer than this code or not a store.
    """
    engine = create_store_engine(url, pool_size=pool_size)
    try:
        ensure_schema(engine)
    except ValueError as exc:
        engine.dispose()
        raise ValueError(f"score store {display_url(url)}: {exc}") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ValueError(f"cannot open score store {display_url(url)}: {first_line(exc)}") from None
    return engine


def first_line(exc: BaseException) -> str:
    """The first line of a database error (the driver's message when it has one)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "MIGRATION_LOCK_TIMEOUT_MS",
    "SCHEMA_VERSION",
    "VALUE_COLUMNS",
    "VALUE_TIER_PATTERN",
    "create_store_engine",
    "display_url",
    "ensure_schema",
    "first_line",
    "open_store",
    "read_version",
    "runs",
    "scores",
    "sqlite_path",
    "store_meta",
    "store_url",
    "utc_text",
    "writing",
]
