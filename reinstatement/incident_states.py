"""An incident's states, the moves allowed between them, and how a state reads to operators.

Plain Python: the rules `reinstatement.lifecycle.transition` checks before it writes a
status, and the values every layer reads (the flows, the tasks, the reports).

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
approval. `IncidentState.may_restore` is the incident's half of the test; which cases may
be restored is `reinstatement.approval.Permit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from reinstatement.errors import BadInput
from reinstatement.plans import PlanRef
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


@dataclass(frozen=True)
class Transition:
    """One transition of an incident's status, as the audit trail holds it."""

    key: str
    from_status: str | None  # None: the incident was registered
    to: IncidentStatus
    actor: str
    reason: str
    at: datetime


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


def check_transition(state: IncidentState, to: IncidentStatus) -> None:
    """Refuse (`TransitionRefused`) a move the lifecycle does not allow from `state`: off
    `ALLOWED`, to approved or rejected without that decision on the newest plan, or to
    running without the approval the incident requires."""
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
