"""Who decides, what a decision approves, and the one answer to "may this restore?".

An approval approves a plan (`reinstatement.plans`): the exact cases an operator saw,
named by its digest. It is recorded by `decide`, which refuses a decision on anything but
the newest plan of an incident awaiting approval, and an approval by the person who
declared the incident. On PostgreSQL the owner's function `reinstatement_record_decision`
checks the same again and is the only way a decision is written.

Identities. On the command line a person is the PostgreSQL role the command connects as,
when that is a person's own role (neither the pipeline's role nor a superuser, which
people share), and otherwise the operating system's login name (`getpass.getuser()`). In
the Prefect UI a person is the name given in the incident's form (who declared it) and in
the approval form (who decided); the pipeline's role relays those.

Restores. `restore_permit` is the one answer to "may this incident restore now, and what":
read under the incident's share lock, it refuses unless the incident is running and,
where it requires approval, its newest plan is approved; `Permit.allows` then says which
case may be restored: one that plan holds with a verdict that restores and exactly the
bans the restore would reverse now. Every path that restores (runs with any flags,
resumes, child runs, the nightly reconciliation, a reviewer's decision) asks it; on
PostgreSQL the owner's restore function enforces the same rule itself.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import BigInteger, Connection, Text, bindparam, func, insert, select

from reinstatement import incident_states, lifecycle, plan_records, plans
from reinstatement.errors import BadInput
from reinstatement.incident_states import IncidentState, IncidentStatus, TransitionRefused
from reinstatement.models import Decision, PlanCase
from reinstatement.plans import PlanRef
from reinstatement.store import queries, store_for
from reinstatement.store.engine import utcnow

PIPELINE_ROLE = "reinstatement_pipeline"  # the role sql/least_privilege_role.sql creates
VIA_CLI = "cli"
VIA_DATABASE_ROLE = "database-role"
VIA_PREFECT_UI = "prefect-ui"
NAME_LENGTH = 100

DecisionKind = Literal["approve", "reject"]


@dataclass(frozen=True)
class Identity:
    """A person who declares or decides, and how the pipeline knows them."""

    name: str
    via: str

    def describe(self) -> str:
        where = {VIA_CLI: "OS login on the command line",
                 VIA_DATABASE_ROLE: "database role",
                 VIA_PREFECT_UI: "the Prefect UI"}.get(self.via, self.via)
        return f"{self.name} ({where})"


def process_identity(conn: Connection) -> Identity:
    """Who runs this command: their own database role, or else their OS login name."""
    if store_for(conn).database_roles:
        role, superuser = conn.execute(queries.statement(conn, "session_role")).one()
        if role != PIPELINE_ROLE and not superuser:
            return Identity(str(role), VIA_DATABASE_ROLE)
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = ""
    if not login.strip():
        raise BadInput("cannot tell who you are: set LOGNAME to your login name, or "
                       "connect as your own database role")
    return Identity(login.strip()[:NAME_LENGTH], VIA_CLI)


def ui_identity(name: str | None, field: str) -> Identity:
    """The person a Prefect UI form names; BadInput naming the field when it is empty."""
    cleaned = (name or "").strip()
    if not cleaned:
        raise BadInput(f"{field}: give your name or handle; the incident's approver must be "
                       "someone else")
    if len(cleaned) > NAME_LENGTH:
        raise BadInput(f"{field}: at most {NAME_LENGTH} characters")
    return Identity(cleaned, VIA_PREFECT_UI)


def same_person(first: str | None, second: str | None) -> bool:
    """Whether two names name one person (case and surrounding spaces aside)."""
    return bool(first and second and first.strip().lower() == second.strip().lower())


# -- decisions --------------------------------------------------------------------------

def operator_actor(identity: Identity) -> str:
    """Who the audit trail names for an operator's decision."""
    return f"operator:{identity.name}"


def decide(conn: Connection, incident_id: int, decision: DecisionKind, identity: Identity,
           *, plan_digest: str | None = None, operator: str | None = None,
           note: str = "") -> tuple[IncidentState, PlanRef]:
    """Record `identity`'s decision on the incident's newest plan and move the incident to
    approved or rejected; `plan_digest` (or its first 8 digits or more), if given, must
    name that plan. Raises `TransitionRefused` (a BadInput), changing nothing, when the
    decision is not allowed."""
    state = lifecycle.current_state(conn, incident_id, lock=True)
    incident_states.refuse_if_rejected(state)
    key = state.key
    if state.status != IncidentStatus.AWAITING_APPROVAL:
        raise TransitionRefused(f"incident {key} is not awaiting approval (it is "
                                f"{state.status})")
    plan = state.plan
    if plan is None:
        raise TransitionRefused(f"incident {key} has no plan to decide on yet: run it "
                                "first, and read its preview")
    if plan_digest is not None and plan_digest.strip():
        named = plan_records.find_plan(conn, incident_id, plan_digest)
        if named is None:
            raise BadInput(f"--plan: incident {key} has no plan {plan_digest.strip()!r} "
                           "(give at least 8 digits of a digest `reinstate plan` shows)")
        if named.id != plan.id:
            raise TransitionRefused(
                f"plan {named.short} of incident {key} is superseded by plan {plan.short}: "
                f"read it (`reinstate plan {key}`) and decide on that one")
    if plan.decision is not None:
        raise TransitionRefused(f"plan {plan.short} of incident {key} is decided already")
    verb = "approve" if decision == "approve" else "reject"
    if not identity.name.strip():
        raise TransitionRefused(f"an operator's name is needed to {verb} incident {key}")
    note = note.strip()
    if decision == "reject" and not note:
        raise TransitionRefused(f"a note saying why is needed to reject incident {key}")
    if decision == "approve" and same_person(identity.name, state.declared_by):
        raise TransitionRefused(
            f"{identity.name} declared incident {key} and may not approve it: another "
            "person approves")
    if plan_records.stored_digest(conn, plan.id, key) != plan.digest:
        raise TransitionRefused(f"plan {plan.short} of incident {key} no longer matches its "
                                "digest: nothing can be approved until it is made again")
    display = (operator or "").strip()[:NAME_LENGTH] or None
    if store_for(conn).owner_functions:
        conn.execute(select(func.reinstatement_record_decision(
            bindparam(None, plan.id, type_=BigInteger),
            bindparam(None, plan.digest, type_=Text), bindparam(None, decision, type_=Text),
            bindparam(None, identity.name, type_=Text), bindparam(None, identity.via, type_=Text),
            bindparam(None, display, type_=Text), bindparam(None, note, type_=Text))))
    else:
        conn.execute(insert(Decision).values(
            incident_id=incident_id, plan_id=plan.id, decision=decision,
            decided_by=identity.name, decided_via=identity.via, operator=display,
            database_role=None, note=note, decided_at=utcnow()))
    to = IncidentStatus.APPROVED if decision == "approve" else IncidentStatus.REJECTED
    state = lifecycle.transition(
        conn, incident_id, to, operator_actor(identity),
        f"{verb}d plan {plan.short} ({identity.describe()})" + (f": {note}" if note else ""))
    return state, plan


# -- restores ---------------------------------------------------------------------------

class RestoreNotAllowed(TransitionRefused):
    """A restore was asked for an incident that may not restore now; nothing changed."""


@dataclass(frozen=True)
class Permit:
    """What a restore may write now, as read under the incident's share lock."""

    incident_id: int
    # The approved plan every restored case must be held by; None: the incident requires
    # no approval, and its cases restore as they are judged.
    plan: PlanRef | None

    @property
    def plan_id(self) -> int | None:
        return None if self.plan is None else self.plan.id

    def allows(self, plan_verdict: str | None, plan_ban_ids: str | None,
               review_decision: str | None, ban_ids: Sequence[int]) -> bool:
        """Whether a case judged under lock to reverse `ban_ids` may be restored: held by
        the approved plan with a verdict that restores and exactly those bans."""
        if self.plan is None:
            return True
        if plan_verdict is None or plan_ban_ids != plans.ban_ids_text(ban_ids):
            return False
        return plan_verdict == "reinstated" or (
            plan_verdict == plans.REVIEWED and review_decision == "reinstate")


def restore_permit(conn: Connection, incident_id: int) -> Permit:
    """The one answer to "may this incident restore now?", in the restoring transaction.

    The incident's row is read with a share lock on PostgreSQL, so no transition (which
    takes the row for update) and no new plan can change the answer until this
    transaction ends, while restore batches of the same incident still run side by side.
    Raises `RestoreNotAllowed`, changing nothing.
    """
    state = lifecycle.current_state(conn, incident_id, lock="share")
    if not state.may_restore():
        raise RestoreNotAllowed(f"incident {state.key} may not restore now: it is "
                                f"{state.describe()}")
    return Permit(incident_id, state.plan if state.require_approval else None)


def review_permit(conn: Connection, incident_id: int, case_id: int) -> IncidentState:
    """Whether a reviewer's decision to reinstate this case may restore it, asked before
    the decision is recorded (the restore asks `restore_permit` again, bans and all): an
    incident that requires approval restores a reviewed case only when its approved plan
    holds it as needing review. Locks the incident's row; raises `TransitionRefused`."""
    state = lifecycle.current_state(conn, incident_id, lock=True)
    incident_states.refuse_unapproved(state)
    if state.require_approval and state.plan is not None:
        verdict = conn.execute(select(PlanCase.verdict).where(
            PlanCase.plan_id == state.plan.id, PlanCase.case_id == case_id)
        ).scalar_one_or_none()
        if verdict != plans.REVIEWED:
            raise TransitionRefused(
                f"case {case_id} is not in incident {state.key}'s approved plan "
                f"{state.plan.short} as a case to review: run the incident again, so that "
                "a new plan holds it, and have that plan approved first")
    return state
