"""Human review of `needs_review` cases: list them, and record a reviewer's decision.

A decision to reinstate sends the case on through restore and notice like any other
(the restore still checks under lock that its bans are the ones the reviewer saw); a
decision to uphold closes it. Every decision is audited with the reviewer and the note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import BigInteger, Connection, Text, bindparam, func, insert, select, update

from reinstatement import lifecycle
from reinstatement.approval import VIA_CLI, VIA_DATABASE_ROLE, process_identity, review_permit
from reinstatement.errors import BadInput
from reinstatement.incident_states import IncidentStatus
from reinstatement.models import AuditEntry, Case, Incident, Review
from reinstatement.states import CaseState
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow
from reinstatement.verdicts import Outcome

if TYPE_CHECKING:
    from reinstatement.outbox import SendResult

Decision = Literal["reinstate", "uphold"]


def cases_awaiting_review(conn: Connection, incident_key: str | None = None,
                          page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every case waiting for a reviewer, oldest first, read page by page."""
    after = 0
    while True:
        query = (
            select(Case.id, Case.account_id, Case.reasons, Case.round, Incident.key)
            .join(Incident, Incident.id == Case.incident_id)
            .where(Case.state == CaseState.REVIEW, Case.id > after)
            .order_by(Case.id)
            .limit(page)
        )
        if incident_key is not None:
            query = query.where(Incident.key == incident_key)
        rows = conn.execute(query).all()
        if not rows:
            return
        for row in rows:
            yield {"case_id": row.id, "incident": row.key, "account_id": row.account_id,
                   "round": row.round, "why": (row.reasons or {}).get("summary", ""),
                   "reasons": row.reasons}
        after = rows[-1].id


def decide_case(conn: Connection, case_id: int, decision: Decision, reviewer: str,
                note: str, via: str = VIA_CLI) -> tuple[str, int]:
    """Record a reviewer's decision; returns (incident key, case id). BadInput if refused.

    `via`: where the reviewer decided ('cli', or 'prefect-ui' for the review-case
    deployment). Connected as a person's own database role, the review is recorded under
    that role's name, whatever `reviewer` says.
    """
    who = process_identity(conn)
    if who.via == VIA_DATABASE_ROLE:
        reviewer, via = who.name, VIA_DATABASE_ROLE
    reviewer, note = reviewer.strip(), note.strip()
    if not reviewer or len(reviewer) > 100:
        raise BadInput("--reviewer: give your name or handle (at most 100 characters)")
    if not note:
        raise BadInput("--note: say why, for the audit trail")
    if decision not in ("reinstate", "uphold"):
        raise BadInput(f"decision must be reinstate or uphold, not {decision!r}")
    query = select(Case.id, Case.state, Case.incident_id, Incident.key, Incident.status
                   ).join(Incident, Incident.id == Case.incident_id).where(Case.id == case_id)
    query = store_for(conn).locked(query, of=Case)
    case = conn.execute(query).one_or_none()
    if case is None:
        raise BadInput(f"no case {case_id}")
    if case.state != CaseState.REVIEW:
        raise BadInput(f"case {case_id} is not waiting for review (its state is "
                       f"{case.state!r})")
    if decision == "reinstate":
        _ready_to_restore(conn, case.incident_id, f"reviewer:{reviewer}", case_id)
    now = utcnow()
    # The review itself, where the restore reads it (on PostgreSQL the owner's function is
    # the only way to write one); then the case shows it.
    if store_for(conn).owner_functions:
        conn.execute(select(func.reinstatement_record_review(
            bindparam(None, case_id, type_=BigInteger), bindparam(None, decision, type_=Text),
            bindparam(None, reviewer, type_=Text), bindparam(None, via, type_=Text),
            bindparam(None, note, type_=Text))))
    else:
        conn.execute(insert(Review).values(
            incident_id=case.incident_id, case_id=case_id, decision=decision,
            reviewed_by=reviewer, reviewed_via=via, database_role=None, note=note,
            decided_at=now))
    outcome, state = ((Outcome.REINSTATED, CaseState.VERIFIED) if decision == "reinstate"
                      else (Outcome.UPHELD, CaseState.CLOSED))
    conn.execute(
        update(Case).where(Case.id == case_id).values(
            outcome=str(outcome), state=state, reviewed_by=reviewer,
            review_decision=decision, review_note=note, updated_at=now,
        )
    )
    conn.execute(insert(AuditEntry).values(
        incident_id=case.incident_id, case_id=case_id, from_state=case.state, to_state=state,
        actor=f"reviewer:{reviewer}", reason=f"{decision}: {note}", at=now,
    ))
    return case.key, case_id


def _ready_to_restore(conn: Connection, incident_id: int, actor: str, case_id: int) -> None:
    """Refuse a reinstatement the incident's lifecycle and plan do not allow; else let it
    restore.

    An incident that requires approval restores only what its approved plan holds, a
    reviewer's decision included: the case must be in that plan as needing review (the
    restore then checks, under lock, that its bans are still the ones the plan holds). A
    completed incident goes back to running for this one restore, and completes again
    after it.
    """
    state = review_permit(conn, incident_id, case_id)
    if state.status != IncidentStatus.RUNNING:
        lifecycle.transition(conn, incident_id, IncidentStatus.RUNNING, actor,
                             f"case {case_id} reinstated by review")


def reviewer_actor(reviewer: str) -> str:
    """Who the audit trail names for the restore and transitions a review makes."""
    return f"reviewer:{reviewer.strip()}"


def apply_review(case_id: int, decision: Decision, reviewer: str, note: str,
                 via: str = VIA_CLI, *,
                 send_notices: Callable[[int, list[int]], SendResult]) -> dict[str, Any]:
    """Record the decision and, for a reinstatement, restore the case and send its notice.

    One implementation for the CLI and the Prefect UI's review flow (`via` 'prefect-ui').
    `send_notices(incident_id, case_ids)` sends with the process's own backend, secret and
    limits (`tasks.notify.send_case_notices`): a review builds none of its own.
    """
    from reinstatement import runner
    from reinstatement.incidents import load_incident
    from reinstatement.notices.render import sender_domain
    from reinstatement.resources import resources
    from reinstatement.retrying import in_transaction

    settings = resources().settings
    engine = resources().engine
    key, _ = in_transaction(engine, lambda conn: decide_case(conn, case_id, decision,
                                                             reviewer, note, via))
    result: dict[str, Any] = {"case_id": case_id, "incident": key, "decision": decision}
    if decision == "reinstate":
        with engine.connect() as conn:
            incident = load_incident(conn, key)
        actor = reviewer_actor(reviewer)
        ctx = runner.StepContext(engine, incident, 1, actor=actor,
                                 sender_domain=sender_domain(settings.email_from))
        restored = runner.restore_cases(ctx, [case_id])
        result["reinstated"] = restored.outcomes.get(str(Outcome.REINSTATED), 0)
        result["pins_restored"] = restored.pins_restored
        if incident.notify:
            sent = send_notices(incident.id, [case_id])
            result["notice"] = {"sent": sent.sent, "retry": sent.retry, "failed": sent.failed}
        runner.complete_if_done(engine, incident, actor)
    with engine.connect() as conn:
        row = conn.execute(select(Case.state, Case.outcome).where(Case.id == case_id)).one()
    result.update(state=row.state, outcome=row.outcome)
    return result
