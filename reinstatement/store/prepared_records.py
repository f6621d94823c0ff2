"""The outbox's fast path on PostgreSQL: a notice's new state recorded through a statement
prepared on the held connection and run with libpq's PQexecPrepared.

The plain path is `outbox._record_statement`, executed through SQLAlchemy (SQLite always
takes it); this one writes the same UPDATE with the same guards (the notice still
'sending' under the same claim token). Figures: bench/RESULTS.md.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from psycopg import errors as psycopg_errors
from psycopg.pq import ExecStatus
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from reinstatement.models import Notice
from reinstatement.states import NoticeState
from reinstatement.store.engine import UTCDateTime, utcnow

_RAW_RECORD_SQL: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
_NOTICE_TIMESTAMP = UTCDateTime()
# Where a pooled PostgreSQL connection remembers the record statements prepared on it
# (SQLAlchemy keeps a connection's `info` for as long as the connection lives).
_PREPARED_KEY = "reinstatement_outbox_prepared"


def _raw_record_sql(columns: tuple[str, ...]) -> tuple[bytes, bytes]:
    """The same UPDATE as `_record_statement`, as PostgreSQL's own SQL text ($1, $2 ...),
    with the name it is prepared under on a connection."""
    found = _RAW_RECORD_SQL.get(columns)
    if found is None:
        known = Notice.__table__.c
        if any(name not in known for name in columns):
            raise ValueError(f"not columns of the outbox: {columns}")
        names = ("updated_at", *columns)
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, 1))
        where = len(names)
        sql = (f"UPDATE {Notice.__tablename__} SET {assignments} "
               f"WHERE id = ${where + 1} AND state = ${where + 2} AND claim_token = ${where + 3}")
        # Named after the statement itself: senders in threads of one process may build
        # two of these at once, and one name must never stand for two statements.
        digest = hashlib.sha256(sql.encode("ascii")).hexdigest()[:24]
        found = _RAW_RECORD_SQL[columns] = (f"reinstatement_record_{digest}".encode("ascii"),
                                            sql.encode("ascii"))
    return found


def _text_parameter(value: Any, encoding: str, dialect: Any) -> bytes | None:
    """A parameter of the record statement in PostgreSQL's text format."""
    if value is None:
        return None
    if isinstance(value, datetime):
        # An aware UTC timestamp (a naive one is refused, as UTCDateTime does everywhere).
        moment = _NOTICE_TIMESTAMP.process_bind_param(value, dialect)
        assert moment is not None  # only None is given back as None
        return moment.isoformat().encode("ascii")
    if isinstance(value, bool):
        raise TypeError("the outbox records no booleans")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str):
        return value.encode(encoding)
    raise TypeError(f"cannot record a {type(value).__name__} in the outbox")


def _check(result: Any, encoding: str) -> Any:
    """The libpq result, or the driver's error for it (as psycopg raises it)."""
    if result.status in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK):
        return result
    raise psycopg_errors.error_from_result(result, encoding=encoding)



def record_prepared(conn: Connection, notice_id: int, claim_token: str,
                    columns: tuple[str, ...], values: dict[str, Any]) -> int:
    """The UPDATE as a statement prepared on the held connection, run through libpq.

    The same statement as `outbox._record_statement`'s (the plain path, which SQLite
    takes), run with `PQexecPrepared` on the
    driver's libpq connection, its parameters already in text form. At one record a
    notice, SQLAlchemy's execution path cost 136 us of CPU against 48 us for the
    driver's `execute` in the scale benchmark's sender processes, and on a slower
    machine the driver's `execute(..., prepare=True)` cost 150 us against 54 us for
    this call (the database's round trip included in both). A driver error comes back
    as SQLAlchemy's (a dropped connection invalidated), so the recorder treats it as
    the plain path's.
    """
    dialect = conn.dialect
    driver = conn.connection.driver_connection
    assert driver is not None  # a held, open connection
    name, sql = _raw_record_sql(columns)
    try:
        encoding = driver.info.encoding
        parameters = [_text_parameter(value, encoding, dialect) for value in (
            utcnow(), *(values[column] for column in columns),
            notice_id, NoticeState.SENDING, claim_token)]
        pgconn = driver.pgconn
        # Per server session: a pool entry whose connection was replaced (the server ended
        # the old one) keeps its `info`, but the new session has nothing prepared.
        remembered = conn.connection.info.get(_PREPARED_KEY)
        if remembered is None or remembered[0] != pgconn.backend_pid:
            remembered = (pgconn.backend_pid, set())
            conn.connection.info[_PREPARED_KEY] = remembered
        prepared: set[bytes] = remembered[1]
        if name not in prepared:
            try:
                _check(pgconn.prepare(name, sql), encoding)
            except psycopg_errors.DuplicatePreparedStatement:
                pass  # prepared on this connection by an earlier recorder
            prepared.add(name)
        result = _check(pgconn.exec_prepared(name, parameters), encoding)
        return int(result.command_tuples or 0)
    except dialect.loaded_dbapi.Error as orig:
        gone = dialect.is_disconnect(orig, conn.connection.dbapi_connection, None)
        if gone:
            conn.invalidate(orig)
        raise DBAPIError.instance(sql.decode(), (), orig, dialect.loaded_dbapi.Error,
                                  hide_parameters=True, connection_invalidated=gone,
                                  dialect=dialect) from orig
