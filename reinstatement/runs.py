"""The pipeline's record of runs: started under a hold on the run, dead ones named dead.

A run's row says 'running' only while the run lives. On PostgreSQL the run holds an
advisory lock on itself (reinstatement/holders.py) from the statement that inserts its
row until it finishes; a run whose lock is free has died. On SQLite a run is dead when it
was recorded on this host by a process that no longer exists. The next run of any
incident, and the nightly reconciliation, mark such rows 'crashed' (finished_at: when
that was found).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, literal, select, update

from reinstatement.holders import SessionHold, holder_is_gone, process_is_gone, this_process
from reinstatement.models import Run
from reinstatement.retrying import in_transaction
from reinstatement.store import queries, store_for
from reinstatement.store.engine import utcnow

_holds_lock = threading.Lock()
_holds: dict[int, SessionHold] = {}


def run_claim(run_id: int) -> str:
    return f"run:{run_id}"


def start_run(engine: Engine, incident_id: int, flow_run_id: str | None, dry_run: bool, *,
              parent_run_id: int | None = None, step: str | None = None) -> int:
    """Insert the run's row, held by this process for as long as the run lasts.

    A child run (one step of an incident run, fanned out) names its parent and its step.
    """
    name_dead_runs(engine)
    if flow_run_id is not None and parent_run_id is None:
        record_resumed(engine, flow_run_id)
    host, pid = this_process()
    values = {"incident_id": incident_id, "flow_run_id": flow_run_id, "dry_run": dry_run,
              "status": "running", "started_at": utcnow(), "host": host, "pid": pid,
              "parent_run_id": parent_run_id, "step": step}
    if not store_for(engine).session_locks:
        return int(in_transaction(engine, lambda conn: conn.execute(
            insert(Run).values(**values).returning(Run.id)).scalar_one()))
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        # One statement inserts the row and takes the lock: no other session can see the
        # row 'running' before its run holds it.
        run_id = int(conn.execute(queries.statement(conn, "insert_held_run"), values
                                  ).scalar_one())
    except BaseException:
        conn.close()
        raise
    with _holds_lock:
        _holds[run_id] = SessionHold(engine, run_claim(run_id), connection=conn)
    return run_id


# A deployment run that suspended for an operator's decision: no process holds it, and
# Prefect's Resume reruns the same flow run, which records a new row ('resumed' then here).
WAITING = "waiting"
RESUMED = "resumed"


def record_ended_by_prefect(engine: Engine, flow_run_id: str, status: str,
                            at: datetime | None = None) -> int:
    """The runs of a flow run that Prefect cancelled (or found crashed) say so, whatever
    the killed process wrote last ('running', 'failed', 'needs approval', 'waiting'), and
    when that was (`at`, Prefect's time for it; now if not given); how many."""
    ended = utcnow() if at is None else at.astimezone(UTC)
    return int(in_transaction(engine, lambda conn: conn.execute(
        update(Run).where(Run.flow_run_id == flow_run_id,
                          Run.status.in_(["running", "failed", "needs approval", WAITING]))
        .values(status=status, finished_at=ended)).rowcount))


def mark_waiting(engine: Engine, run_id: int, waiting: bool = True) -> None:
    """The run suspends for an operator's decision (its process ends meanwhile), or, with
    `waiting=False`, goes on with the decision in hand."""
    in_transaction(engine, lambda conn: conn.execute(
        update(Run).where(Run.id == run_id).values(status=WAITING if waiting else "running")))


def record_resumed(engine: Engine, flow_run_id: str) -> None:
    """A flow run that waited for a decision runs again (Prefect's Resume reruns it from
    the top): the row of its wait says it was resumed, and when."""
    in_transaction(engine, lambda conn: conn.execute(
        update(Run).where(Run.flow_run_id == flow_run_id, Run.status == WAITING)
        .values(status=RESUMED, finished_at=utcnow())))


def waiting_runs(conn: Connection) -> list[tuple[int, str]]:
    """The incident runs suspended for a decision: (incident id, flow run id) each."""
    return [(int(r.incident_id), str(r.flow_run_id)) for r in conn.execute(
        select(Run.incident_id, Run.flow_run_id).where(
            Run.status == WAITING, Run.parent_run_id.is_(None),
            Run.flow_run_id.is_not(None)).order_by(Run.id))]


def finish_run(engine: Engine, run_id: int, status: str, step_seconds: dict[str, float]) -> None:
    try:
        in_transaction(engine, lambda conn: conn.execute(
            update(Run).where(Run.id == run_id).values(
                status=status, finished_at=utcnow(),
                step_seconds={k: round(v, 3) for k, v in step_seconds.items()},
            )
        ))
    finally:
        with _holds_lock:
            hold = _holds.pop(run_id, None)
        if hold is not None:
            hold.close()


def is_dead(conn: Connection, run_id: int, host: str | None, pid: int | None) -> bool:
    """Whether the run's process is gone (its row may still say 'running')."""
    return _is_dead(conn, run_id, host, pid)


def _is_dead(conn: Connection, run_id: int, host: str | None, pid: int | None) -> bool:
    if store_for(conn).session_locks:
        return bool(conn.execute(select(holder_is_gone(literal(run_claim(run_id))))).scalar())
    return process_is_gone(host, pid)


def name_dead_runs(engine: Engine) -> list[int]:
    """Mark 'crashed' every run row left 'running' by a run that is gone; their ids."""
    def work(conn: Connection) -> list[int]:
        dead = [r.id for r in conn.execute(
            select(Run.id, Run.host, Run.pid).where(Run.status == "running"))
            if _is_dead(conn, r.id, r.host, r.pid)]
        if dead:
            conn.execute(update(Run).where(Run.id.in_(dead), Run.status == "running")
                         .values(status="crashed", finished_at=utcnow()))
        return dead

    return in_transaction(engine, work)
