"""Plain-Python drivers of the steps: one batch in one retried transaction.

Prefect's tasks (in `tasks/`) call these; tests and tools call them directly, without
Prefect. Every function opens its own transaction through `in_transaction`, so a
transient database failure re-runs the batch from the start, and a crash at any moment
leaves each batch either wholly done or not done at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from reinstatement import steps
from reinstatement.db import utcnow
from reinstatement.incidents import (
    IncidentRequest,
    RegisteredIncident,
    load_incident,
    register_incident,
)
from reinstatement.models import Incident
from reinstatement.retrying import in_transaction


@dataclass(frozen=True)
class StepContext:
    engine: Engine
    incident_key: str
    batch_size: int
    actor: str = steps.PIPELINE_ACTOR
    sender_domain: str = "example.com"


def register(engine: Engine, request: IncidentRequest, actor: str) -> RegisteredIncident:
    """Register the incident (or check a rerun asks the same thing) and mark real runs.

    Incident status: 'registered' (dry runs only so far), 'running' (a real run began),
    'awaiting_approval', 'approved', 'rejected', 'completed'. The nightly reconciliation
    resumes only 'running' and 'approved' incidents, never one an operator has not seen.
    """

    def work(conn: Connection) -> RegisteredIncident:
        known = conn.execute(select(Incident.id).where(Incident.key == request.incident_key)
                             ).scalar_one_or_none()
        incident = register_incident(conn, request)
        if known is None:
            steps.audit_incident(conn, incident.id, None, "registered", actor,
                                 f"registered with {request.parameters()}")
        status = conn.execute(select(Incident.status).where(Incident.id == incident.id)
                              ).scalar_one()
        if status == "registered" and not request.dry_run:
            set_incident_status(conn, incident.id, "running", actor, "a real run began")
        return incident

    try:
        return in_transaction(engine, work)
    except IntegrityError:
        # Another run registered the same key a moment ago: check against that one.
        return in_transaction(engine, work)


def set_incident_status(conn: Connection, incident_id: int, status: str, actor: str,
                        reason: str, **fields: object) -> None:
    from sqlalchemy import update

    before = conn.execute(select(Incident.status).where(Incident.id == incident_id)).scalar_one()
    conn.execute(update(Incident).where(Incident.id == incident_id)
                 .values(status=status, updated_at=utcnow(), **fields))
    steps.audit_incident(conn, incident_id, before, status, actor, reason)


def incident_status(engine: Engine, key: str) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(select(Incident.status, Incident.approval)
                           .where(Incident.key == key)).one()
        return row.status, row.approval


def plan_all(ctx: StepContext, on_batch: Callable[[int], None] | None = None) -> int:
    """Create a case for every candidate, page by page; resumes after the last planned."""
    created_total = 0
    with ctx.engine.connect() as conn:
        incident = load_incident(conn, ctx.incident_key)
        after = steps.planned_through(conn, incident.id)

    while True:
        def work(conn: Connection, after: int = after) -> tuple[int, int | None]:
            return steps.plan_batch(conn, incident, after, ctx.batch_size)

        created, last = in_transaction(ctx.engine, work)
        if last is None:
            return created_total
        created_total += created
        after = last
        if on_batch is not None:
            on_batch(created)


def verify_one_batch(ctx: StepContext, preview: bool) -> steps.BatchResult:
    def work(conn: Connection) -> steps.BatchResult:
        incident = load_incident(conn, ctx.incident_key)
        return steps.verify_batch(conn, incident, ctx.batch_size, preview=preview,
                                  actor=ctx.actor)

    return in_transaction(ctx.engine, work)


def restore_one_batch(ctx: StepContext) -> steps.BatchResult:
    def work(conn: Connection) -> steps.BatchResult:
        incident = load_incident(conn, ctx.incident_key)
        return steps.restore_batch(conn, incident, ctx.batch_size,
                                   sender_domain=ctx.sender_domain, actor=ctx.actor)

    return in_transaction(ctx.engine, work)


def pending(ctx: StepContext) -> dict[str, int]:
    """How much work waits for each step: cases to verify or restore, notices due."""
    from reinstatement.outbox import due_count

    with ctx.engine.connect() as conn:
        incident = load_incident(conn, ctx.incident_key)
        work = steps.pending_work(conn, incident.id)
        work["notify"] = due_count(conn, incident.id)
        return work


def restore_cases(ctx: StepContext, case_ids: list[int]) -> steps.BatchResult:
    """Restore these verified cases only (a reviewer's decision), in one transaction."""
    def work(conn: Connection) -> steps.BatchResult:
        incident = load_incident(conn, ctx.incident_key)
        return steps.restore_batch(conn, incident, len(case_ids), case_ids=case_ids,
                                   sender_domain=ctx.sender_domain, actor=ctx.actor)

    return in_transaction(ctx.engine, work)
