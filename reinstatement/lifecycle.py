"""The incident's lifecycle: the one function that changes an incident's status, and the
reads of its state and of its transitions.

Every change of an incident's status in the pipeline goes through `transition`: the flows,
the CLI's approve and reject, the reconciliation and review. It locks the incident's row,
checks the move is allowed from the status the row holds now (not from what a caller
loaded earlier), writes it and audits it with the actor and the reason, in the caller's
transaction. A move that is not allowed raises `TransitionRefused`, a `BadInput`: the
CLI's exit status 2, never a silent change. The states, the moves allowed between them
(with the diagram) and that check, `check_transition`, are plain Python in
`reinstatement.incident_states`.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Connection, func, insert, select, update

from reinstatement.errors import BadInput
from reinstatement.incident_states import (
    DecisionRef,
    IncidentState,
    IncidentStatus,
    Transition,
    check_transition,
)
from reinstatement.models import AuditEntry, Decision, Incident, Run
from reinstatement.plan_records import newest_plan
from reinstatement.runs import WAITING
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow


def current_state(conn: Connection, incident_id: int, *,
                  lock: bool | Literal["share"] = False) -> IncidentState:
    """The incident's status as it is now.

    `lock=True` holds its row for update until the transaction ends (a transition);
    `lock="share"` only keeps it from changing meanwhile (a restore batch). On SQLite the
    transaction's write lock, taken at BEGIN IMMEDIATE, already does both.
    """
    query = select(Incident.id, Incident.key, Incident.status, Incident.params,
                   Incident.declared_by, Incident.declared_via).where(Incident.id == incident_id)
    if lock:
        query = store_for(conn).locked(query, read=lock == "share")
    row = conn.execute(query).one()
    decided = conn.execute(
        select(Decision.decision, Decision.decided_by, Decision.decided_via, Decision.operator,
               Decision.note, Decision.decided_at, Decision.plan_id)
        .where(Decision.incident_id == incident_id).order_by(Decision.id.desc()).limit(1)
    ).first()
    return IncidentState(
        id=row.id, key=row.key, status=IncidentStatus(row.status),
        # A missing setting reads as requiring approval: the protective reading.
        require_approval=bool((row.params or {}).get("require_approval", True)),
        declared_by=row.declared_by, declared_via=row.declared_via,
        plan=newest_plan(conn, incident_id),
        decision=None if decided is None else DecisionRef(*decided),
        run_waits=row.status == IncidentStatus.AWAITING_APPROVAL and conn.execute(
            select(Run.id).where(Run.incident_id == incident_id, Run.status == WAITING,
                                 Run.parent_run_id.is_(None)).limit(1)).first() is not None,
    )


def state_by_key(conn: Connection, key: str) -> IncidentState:
    incident_id = conn.execute(select(Incident.id).where(Incident.key == key)).scalar_one_or_none()
    if incident_id is None:
        raise BadInput(f"no incident registered under the key {key!r}")
    return current_state(conn, incident_id)


def transition(conn: Connection, incident_id: int, to: IncidentStatus, actor: str,
               reason: str) -> IncidentState:
    """Move the incident to `to` if the lifecycle allows it from its status now; audited.

    Approved and rejected follow a decision on the newest plan, which
    `reinstatement.approval.decide` records first. Raises `TransitionRefused`, changing
    nothing, when the move is not allowed.
    """
    state = current_state(conn, incident_id, lock=True)
    check_transition(state, to)
    conn.execute(update(Incident).where(Incident.id == incident_id)
                 .values(status=str(to), updated_at=utcnow()))
    conn.execute(insert(AuditEntry).values(
        incident_id=incident_id, case_id=None, from_state=str(state.status), to_state=str(to),
        actor=actor, reason=reason, at=utcnow(),
    ))
    return current_state(conn, incident_id)


def audit_mark(conn: Connection) -> int:
    """The newest audit row's id: transitions after it are those made since."""
    return int(conn.execute(select(func.coalesce(func.max(AuditEntry.id), 0))).scalar_one())


def transitions_since(conn: Connection, mark: int, *, incident_id: int | None = None,
                      actor: str | None = None) -> list[Transition]:
    """The incidents' transitions committed after `audit_mark` gave `mark`, oldest first
    (of one incident, by one actor, where given): what a caller's own step changed."""
    query = (select(Incident.key, AuditEntry.from_state, AuditEntry.to_state,
                    AuditEntry.actor, AuditEntry.reason, AuditEntry.at)
             .join(Incident, Incident.id == AuditEntry.incident_id)
             .where(AuditEntry.id > mark, AuditEntry.case_id.is_(None),
                    AuditEntry.to_state.in_([str(s) for s in IncidentStatus]))
             .order_by(AuditEntry.id))
    if incident_id is not None:
        query = query.where(AuditEntry.incident_id == incident_id)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    return [Transition(row.key, row.from_state, IncidentStatus(row.to_state), row.actor,
                       row.reason, row.at) for row in conn.execute(query)]
