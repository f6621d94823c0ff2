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
        │                      │     approve │ new candidates since the approval
        │                      │        ▼    │
        └──(no approval)───────┴──▶ running ◀── approved
                                     │   ▲
                                     ▼   │ banned again by a faulty version
                                   completed

Approval belongs to the incident: `require_approval` is one of the parameters its key was
registered with. While such an incident is not approved, nothing may restore or notify
for it; `may_restore` is the one test of that, and the restore steps check it again under
the same lock before they change the platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from sqlalchemy import Connection, insert, select, update

from reinstatement.db import utcnow
from reinstatement.errors import BadInput
from reinstatement.models import AuditEntry, Incident


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
    S.COMPLETED: frozenset({S.RUNNING}),
    S.REJECTED: frozenset(),
}
# Statuses a robot (the nightly reconciliation, the resume deployment) may carry on from.
RESUMABLE = (S.RUNNING, S.APPROVED)


class TransitionRefused(BadInput):
    """A status change the lifecycle does not allow; nothing was changed."""


@dataclass(frozen=True)
class IncidentState:
    """An incident's status and approval as its row holds them."""

    id: int
    key: str
    status: IncidentStatus
    require_approval: bool
    approval: str | None
    approved_by: str | None
    approval_note: str | None
    approval_decided_at: datetime | None

    @property
    def approved(self) -> bool:
        return self.approval == "approved"

    def may_restore(self) -> bool:
        """Whether restoring and notifying may happen for this incident now."""
        if self.status != S.RUNNING:
            return False
        return self.approved or not self.require_approval

    def describe(self) -> str:
        """The status in words for operators: who decided, when and why."""
        if self.status == S.REJECTED:
            return f"rejected by {self.approved_by}: {self.approval_note}"
        if self.status == S.AWAITING_APPROVAL:
            return (f"awaiting approval: approve with `reinstate approve {self.key} "
                    "--operator NAME` (or Resume the run in the Prefect UI), or reject with "
                    f"`reinstate reject {self.key} --operator NAME --note WHY`")
        return str(self.status)


def current_state(conn: Connection, incident_id: int, *,
                  lock: bool | Literal["share"] = False) -> IncidentState:
    """The incident's status as it is now.

    `lock=True` holds its row for update until the transaction ends (a transition);
    `lock="share"` only keeps it from changing meanwhile (a restore batch). On SQLite the
    transaction's write lock, taken at BEGIN IMMEDIATE, already does both.
    """
    query = select(Incident.id, Incident.key, Incident.status, Incident.params,
                   Incident.approval, Incident.approved_by, Incident.approval_note,
                   Incident.approval_decided_at).where(Incident.id == incident_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(read=lock == "share")
    row = conn.execute(query).one()
    return IncidentState(
        id=row.id, key=row.key, status=IncidentStatus(row.status),
        require_approval=bool((row.params or {}).get("require_approval", False)),
        approval=row.approval, approved_by=row.approved_by, approval_note=row.approval_note,
        approval_decided_at=row.approval_decided_at,
    )


def state_by_key(conn: Connection, key: str) -> IncidentState:
    incident_id = conn.execute(select(Incident.id).where(Incident.key == key)).scalar_one_or_none()
    if incident_id is None:
        raise BadInput(f"no incident registered under the key {key!r}")
    return current_state(conn, incident_id)


def transition(conn: Connection, incident_id: int, to: IncidentStatus, actor: str,
               reason: str, *, decided_by: str | None = None,
               note: str | None = None) -> IncidentState:
    """Move the incident to `to` if the lifecycle allows it from its status now; audited.

    `decided_by` and `note` record an operator's decision (approve or reject). Raises
    `TransitionRefused`, changing nothing, when the move is not allowed.
    """
    state = current_state(conn, incident_id, lock=True)
    _check(state, to, decided_by, note)
    values: dict[str, object] = {"status": str(to), "updated_at": utcnow()}
    if to in (S.APPROVED, S.REJECTED):
        values.update(approval="approved" if to == S.APPROVED else "rejected",
                      approved_by=decided_by, approval_note=note or "",
                      approval_decided_at=utcnow())
    if to == S.AWAITING_APPROVAL and state.status in (S.APPROVED, S.RUNNING):
        # New candidates since the approval: the operator must see them and decide again.
        values.update(approval=None, approved_by=None, approval_note=None,
                      approval_decided_at=None)
    conn.execute(update(Incident).where(Incident.id == incident_id).values(**values))
    conn.execute(insert(AuditEntry).values(
        incident_id=incident_id, case_id=None, from_state=str(state.status), to_state=str(to),
        actor=actor, reason=reason, at=utcnow(),
    ))
    return current_state(conn, incident_id)


def refuse_if_rejected(state: IncidentState) -> None:
    """A rejected incident is final: no run of its key, dry or real, does anything."""
    if state.status == S.REJECTED:
        raise TransitionRefused(f"incident {state.key} was {state.describe()}; nothing more "
                                "is done for it: declare a new incident key to try again")


def refuse_unapproved(state: IncidentState) -> None:
    """Nothing is restored for an incident that requires approval and is not approved."""
    refuse_if_rejected(state)
    if state.require_approval and not state.approved:
        raise TransitionRefused(f"incident {state.key} requires an operator's approval "
                                f"before anything is restored: it is {state.describe()}")


def _check(state: IncidentState, to: IncidentStatus, decided_by: str | None,
           note: str | None) -> None:
    key = state.key
    if to not in ALLOWED[state.status]:
        refuse_if_rejected(state)
        if to in (S.APPROVED, S.REJECTED):
            raise TransitionRefused(f"incident {key} is not awaiting approval (it is "
                                    f"{state.status})")
        raise TransitionRefused(f"incident {key} cannot go from {state.status} to {to}")
    if to in (S.APPROVED, S.REJECTED) and not (decided_by or "").strip():
        verb = "approve" if to == S.APPROVED else "reject"
        raise TransitionRefused(f"an operator's name is needed to {verb} incident {key}")
    if to == S.REJECTED and not (note or "").strip():
        raise TransitionRefused(f"a note saying why is needed to reject incident {key}")
    if to == S.RUNNING:
        refuse_unapproved(state)
