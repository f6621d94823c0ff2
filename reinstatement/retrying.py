"""Retrying one database transaction when it fails for a passing reason.

The narrow layer of the two retry layers: a serialization failure, a deadlock, a dropped
connection or a locked SQLite file makes the whole transaction run again (it is always
safe, the transaction having rolled back). Anything else is a real error and is raised at
once. The wider layer, Prefect's task retries, re-runs a whole batch task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs worth another try: serialization_failure, deadlock_detected, the connection
# exception class, admin/crash shutdown, cannot_connect_now, lock_not_available.
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "55P03"}
TRANSIENT_SQLSTATE_CLASSES = {"08"}


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away if the same transaction runs again."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        # psycopg errors raised before a SQLSTATE exists (connection refused, reset), and
        # SQLite's lock contention.
        return any(s in text for s in ("database is locked", "connection", "server closed",
                                       "terminating", "timeout", "could not receive"))
    return False


def _describe(exc: BaseException | None) -> str:
    """The error without its statement and bound parameters (addresses, names)."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        first_line = (str(exc.orig).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__} ({sqlstate or 'no SQLSTATE'}): {first_line}"
    return type(exc).__name__


def _log_before_retry(retry_state: RetryCallState) -> None:
    # Not tenacity's before_sleep_log: it logs str(exception), and a SQLAlchemy error's
    # text carries the statement's parameters, recipients' addresses included.
    outcome = retry_state.outcome
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    logger.warning("transaction attempt %d failed with %s; retrying in %.2f s",
                   retry_state.attempt_number,
                   _describe(outcome.exception() if outcome else None), wait)


def transaction_retrying(attempts: int = 5, max_seconds: float = 120.0) -> Retrying:
    return Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.5),
        before_sleep=_log_before_retry,
        reraise=True,
    )


def in_transaction(engine: Engine, work: Callable[[Connection], T],
                   retrying: Retrying | None = None) -> T:
    """Run `work` in one transaction, again from the start after a transient failure."""
    for attempt in retrying or transaction_retrying():
        with attempt, engine.begin() as conn:
            return work(conn)
    raise AssertionError("unreachable: tenacity either returns or reraises")
