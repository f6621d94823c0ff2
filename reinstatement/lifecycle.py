"""The incident's lifecycle: its states, the transitions allowed, and the one function that
performs them.

Every change of an incident's status in the pipeline goes through `transition`: the flows,
the CLI's approve and reject, the reconciliation and review. It locks the incident's row,
checks the move is allowed from the status the row holds now (not from what a caller
loaded earlier), writes it and audits it with the actor and the reason, in the caller's
transaction. A move that is not allowed raises `TransitionRefused`, a `BadInput`: the
CLI's exit status 2, never a silent change.

    registered ──dry run──▶ previewed ──┐
        │                      │        │ (approval required)
        │                      │        ▼
        │                      │   awaiting_approval ──reject──▶ rejected (final)
        │                      │        │    ▲
        │                      │     approve │ a new plan: the judgement changed
        │                      │        ▼    │ since the approved one
        └──(no approval)───────┴──▶ running ◀── approved
                                     │   ▲
                                     ▼   │ banned again by a faulty version
                                   completed ──(a new plan)──▶ awaiting_approval

Whether an incident requires approval is one of the parameters its key was registered
with. Such an incident restores only what an operator approved: a decision names a plan
(`reinstatement.plans`), approved and rejected follow a decision on the newest plan, and a
new plan (anything the approved one did not hold) sends the incident back to awaiting
approval. `may_restore` is the incident's half of the test; which cases may be restored is
`reinstatement.approval.Permit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from sqlalchemy import Connection, func, insert, select, update

from reinstatement.errors import BadInput
from reinstatement.models import AuditEntry, Decision, Incident, Run
from reinstatement.plan_records import newest_plan
from reinstatement.plans import PlanRef
from reinstatement.runs import WAITING
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow
from reinstatement.wording import sentence


class IncidentStatus(StrEnum):
    REGISTERED = "registered"  # the key is registered; nothing previewed yet
    PREVIEWED = "previewed"  # a dry run published a preview; nothing changed
    AWAITING_APPROVAL = "awaiting_approval"  # previewed for a real run; an operator decides
    APPROVED = "approved"  # an operator approved; restoring may start
    REJECTED = "rejected"  # an operator rejected: final, nothing is ever restored
    RUNNING = "running"  # restoring and notifying
    COMPLETED = "completed"  # every case settled


S = IncidentStatus
ALLOWED: dict[IncidentStatus, frozenset[IncidentStatus]] = {
    S.REGISTERED: frozenset({S.PREVIEWED, S.AWAITING_APPROVAL, S.RUNNING}),
    S.PREVIEWED: frozenset({S.PREVIEWED, S.AWAITING_APPROVAL, S.RUNNING}),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.RUNNING, S.AWAITING_APPROVAL}),
    S.RUNNING: frozenset({S.COMPLETED, S.AWAITING_APPROVAL}),
    S.COMPLETED: frozenset({S.RUNNING, S.AWAITING_APPROVAL}),
    S.REJECTED: frozenset(),
}
# How `IncidentState.describe` begins for an incident awaiting approval.
AWAITING_APPROVAL_WORDS = "awaiting approval"
# Statuses a robot (the nightly reconciliation, the resume deployment) may carry on from.
RESUMABLE = (S.RUNNING, S.APPROVED)


class TransitionRefused(BadInput):
    """A status change the lifecycle does not allow; nothing was changed."""


@dataclass(frozen=True)
class DecisionRef:
    """The newest decision on one of the incident's plans."""

    decision: str  # 'approve' or 'reject'
    by: str
    via: str
    operator: str | None
    note: str
    at: datetime
    plan_id: int | None


@dataclass(frozen=True)
class IncidentState:
    """An incident's status as its row holds it, its newest plan and newest decision."""

    id: int
    key: str
    status: IncidentStatus
    require_approval: bool
    declared_by: str | None
    declared_via: str | None
    plan: PlanRef | None  # the newest plan: the only one a decision or a restore may name
    decision: DecisionRef | None
    # Awaiting approval: a deployment run is suspended for the decision (Resume in the UI).
    run_waits: bool = False

    @property
    def approved(self) -> bool:
        """Whether the newest plan is approved (and so nothing unseen is in it)."""
        return self.plan is not None and self.plan.approved

    def may_restore(self) -> bool:
        """Whether restoring and notifying may happen for this incident now: it is running
        and, if it requires approval, its newest plan is approved. Which cases: see
        `reinstatement.approval.Permit`."""
        if self.status != S.RUNNING:
            return False
        return self.approved or not self.require_approval

    def _in_the_ui(self) -> str:
        if self.run_waits:
            return "or Resume the run that waits for it in the Prefect UI"
        return ("no run waits for it in the Prefect UI: start the incident's deployment "
                "again to decide there")

    def describe(self) -> str:
        """The status in words for operators: who decided, when and why.

        One clause without a full stop of its own (a rejection ends with the operator's
        note as written): a caller that goes on after it ends it with
        `reinstatement.wording.sentence`, so a note ending with a full stop gets one, not
        two. An incident awaiting approval reads "awaiting approval ...", and a heading
        that says so already shows only the rest (`tasks.reporting`).
        """
        if self.status == S.REJECTED and self.decision is not None:
            return f"rejected by {self.decision.by}: {self.decision.note}"
        if self.status == S.AWAITING_APPROVAL:
            plan = f" of plan {self.plan.short}" if self.plan is not None else ""
            return (f"{AWAITING_APPROVAL_WORDS}{plan}: read it with `reinstate plan "
                    f"{self.key}`, then someone other than its declarer approves it with "
                    f"`reinstate approve {self.key}` ({self._in_the_ui()}), or rejects it "
                    f"with `reinstate reject {self.key} --note WHY`")
        return str(self.status)


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
        run_waits=row.status == S.AWAITING_APPROVAL and conn.execute(
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
    _check(state, to)
    conn.execute(update(Incident).where(Incident.id == incident_id)
                 .values(status=str(to), updated_at=utcnow()))
    conn.execute(insert(AuditEntry).values(
        incident_id=incident_id, case_id=None, from_state=str(state.status), to_state=str(to),
        actor=actor, reason=reason, at=utcnow(),
    ))
    return current_state(conn, incident_id)


@dataclass(frozen=True)
class Transition:
    """One transition of an incident's status, as the audit trail holds it."""

    key: str
    from_status: str | None  # None: the incident was registered
    to: IncidentStatus
    actor: str
    reason: str
    at: datetime


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


def refuse_if_rejected(state: IncidentState) -> None:
    """A rejected incident is final: no run of its key, dry or real, does anything."""
    if state.status == S.REJECTED:
        raise TransitionRefused(f"incident {state.key} was {sentence(state.describe())} "
                                "Nothing more is done for it: declare a new incident key to "
                                "try again")


def refuse_unapproved(state: IncidentState) -> None:
    """Nothing is restored for an incident that requires approval and is not approved."""
    refuse_if_rejected(state)
    if state.require_approval and not state.approved:
        raise TransitionRefused(f"incident {state.key} requires an operator's approval "
                                f"before anything is restored: it is {state.describe()}")


def _check(state: IncidentState, to: IncidentStatus) -> None:
    key = state.key
    if to not in ALLOWED[state.status]:
        refuse_if_rejected(state)
        if to in (S.APPROVED, S.REJECTED):
            raise TransitionRefused(f"incident {key} is not awaiting approval (it is "
                                    f"{state.status})")
        raise TransitionRefused(f"incident {key} cannot go from {state.status} to {to}")
    wanted = {S.APPROVED: "approve", S.REJECTED: "reject"}.get(to)
    if wanted is not None and (state.plan is None or state.plan.decision != wanted):
        raise TransitionRefused(f"incident {key} is {to} only by a decision on its newest "
                                "plan (reinstatement.approval.decide)")
    if to == S.RUNNING:
        refuse_unapproved(state)
