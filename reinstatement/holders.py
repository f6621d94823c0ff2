"""Whether the holder of a claim (a batch of notices being sent, a run) is still alive.

On PostgreSQL the database knows: a holder takes a session-level advisory lock, keyed by
its claim, on a connection it keeps for as long as it holds the claim. When its process
dies, the server drops that connection and the lock with it, at once. Anyone else asks
with `pg_try_advisory_xact_lock`: it succeeds only when no live session holds the key (and
lets go again at the end of the asking transaction). So a dead holder's claim is free the
moment it dies, and a live holder's claim is never taken over, however slow it is.

On SQLite there are no sessions to ask. The rule there: a notice claim is taken over only
after its lease (`REINSTATE_NOTICE_LEASE_SECONDS`) runs out, and a run is dead when it was
recorded on this host by a process that no longer exists.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, Engine, cast, func
from sqlalchemy.dialects.postgresql import BIT

from reinstatement.store import queries, store_for


def lock_key(claim: Any) -> ColumnElement[int]:
    """The advisory-lock key of a claim, as SQL over `claim` (a column or a bound value).

    One 64-bit key per claim, computed by PostgreSQL itself from the claim's text. The
    holders take their lock through the statements of sql/queries/holders.sql and
    runs.sql, which spell the same key (tests/test_outbox.py holds them to this one)."""
    hexdigits = func.concat("x", func.substr(func.md5(claim), 1, 16))
    return cast(cast(hexdigits, BIT(64)), BigInteger)


def holder_is_gone(claim: Any) -> ColumnElement[bool]:
    """SQL true when no live session holds the claim `claim` (PostgreSQL only)."""
    return func.pg_try_advisory_xact_lock(lock_key(claim))


class SessionHold:
    """A claim held for as long as this object is open (PostgreSQL: an advisory lock on a
    connection of its own; elsewhere nothing). The connection may be used for writes."""

    def __init__(self, engine: Engine, claim: str,
                 connection: Connection | None = None) -> None:
        """`connection`: one that already holds the claim's lock (taken in the statement
        that wrote the claim), which this hold then keeps and releases."""
        self.engine = engine
        self.claim = claim
        self.connection = connection

    @property
    def held_by_database(self) -> bool:
        return store_for(self.engine).session_locks

    def open(self) -> SessionHold:
        if self.held_by_database and self.connection is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(queries.statement(conn, "hold_claim"), {"claim": self.claim})
            self.connection = conn
        return self

    def close(self) -> None:
        conn, self.connection = self.connection, None
        if conn is None:
            return
        try:
            if not conn.invalidated:
                conn.execute(queries.statement(conn, "release_claim"), {"claim": self.claim})
        except Exception:  # noqa: BLE001 - a broken connection holds nothing any more
            conn.invalidate()
        finally:
            conn.close()

    def __enter__(self) -> SessionHold:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def this_process() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def process_is_gone(host: str | None, pid: int | None) -> bool:
    """True when (host, pid) names a process of this host that no longer exists."""
    if host != socket.gethostname() or pid is None:
        return False  # another machine's process: not ours to judge from here
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
