"""Engines and the column types both databases share.

The engine is created once per process and URL; callers own their transactions
(`with engine.begin() as conn:`), and the helpers in this package take a connection
and never commit.

SQLite is the embedded default. Two things make it behave like the PostgreSQL we run
in production: timestamps are stored as UTC and come back timezone-aware, and every
transaction starts with BEGIN IMMEDIATE, which takes SQLite's write lock up front.
That lock is what stands in for PostgreSQL's row locks when two runs of one incident
claim work at the same time: the second waits instead of reading stale state.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Text, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from reinstatement.store import queries

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE on PostgreSQL; on SQLite, UTC text that reads back aware.

    A naive datetime is refused rather than guessed at: the contract's timestamps
    are timezone-aware UTC, and a guessed zone would move a ban in or out of an
    incident's window.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given where UTC is required")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class epoch_hour(FunctionElement[int]):  # noqa: N801 - named as the SQL it stands for
    """The whole hours from 1970-01-01 UTC to a UTCDateTime column's moment (an hour's
    bucket), as each database computes it."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_hour"


@compiles(epoch_hour, "postgresql")
def _epoch_hour_postgresql(element: epoch_hour, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(floor(extract(epoch FROM {compiler.process(element.clauses, **kw)}) / 3600) "\
           "AS BIGINT)"


@compiles(epoch_hour, "sqlite")
def _epoch_hour_sqlite(element: epoch_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # UTCDateTime stores 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC on SQLite.
    return f"(CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER) "\
           "/ 3600)"


class utc_day(FunctionElement[str]):  # noqa: N801 - named as the SQL it stands for
    """The UTC day of a UTCDateTime column's moment, as YYYY-MM-DD text."""

    type = Text()
    inherit_cache = True
    name = "utc_day"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(timezone('UTC', {compiler.process(element.clauses, **kw)}), 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # UTCDateTime stores 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC on SQLite.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own
        # implicit BEGIN would be DEFERRED and could not be upgraded without deadlock).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(queries.sql("sqlite", "enforce_foreign_keys"))
        cursor.execute(queries.sql("sqlite", "wait_for_the_write_lock"))
        cursor.execute(queries.sql("sqlite", "write_ahead_log"))
        cursor.execute(queries.sql("sqlite", "sync_at_checkpoints"))
        cursor.close()
        # The functions compiled conditions call (exact decimals, evidence depth).
        from reinstatement.store.condition_sql import register_sqlite_functions

        register_sqlite_functions(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(queries.sql("sqlite", "begin_immediate"))


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url`, set up for this pipeline's use of that database.

    Statement parameters are kept out of error messages (`hide_parameters`): they carry
    users' email addresses and names, and errors end up in logs and Prefect's UI.
    """
    kwargs.setdefault("hide_parameters", True)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 60})
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # prepare_threshold=None: psycopg prepares no statement of its own. One it had prepared
    # made it send DEALLOCATE ALL at the connection's next ROLLBACK (the pool's reset on
    # return), which took the outbox's own prepared record statement with it
    # (store/prepared_records.py): "prepared statement ... does not exist" in a notify batch.
    kwargs.setdefault("connect_args", {"connect_timeout": 10, "application_name": "reinstatement",
                                       "prepare_threshold": None})
    return create_engine(url, **kwargs)


def missing_database_file(url: str) -> bool:
    """The URL names an embedded database file that does not exist (connecting would
    make an empty one)."""
    parsed = make_url(url)
    database = parsed.database or ""
    return (parsed.get_backend_name() == "sqlite" and bool(database)
            and database != ":memory:" and not database.startswith("file:")
            and not Path(database).exists())


def get_engine(url: str) -> Engine:
    """The process's one engine for `url` (tasks in one worker share its pool)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
