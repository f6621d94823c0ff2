"""What the nightly reconciliation looks for, and the repairs that are safe to make.

Five duties, each a plain function on a connection (the flow in flows/reconcile.py
wires them together and runs the incidents it finds through the usual steps):

1. standing bans from a rule version whose status is 'faulty' that no incident covers;
2. incidents left mid-way by a crashed or cancelled run (only those already running or
   approved: an incident waiting for an operator's approval is never resumed by a robot);
3. notices whose retry time has come, or stuck in 'sending' after a crash (outbox.py);
4. accounts an incident reinstated that a faulty version of the same incident banned
   again afterwards: a new round of the case, verified and reinstated like the first;
5. invariants: a reinstated account that is banned again with no action explaining it; a
   pin still hidden by a ban the pipeline reversed (repaired: it is exactly what the
   restore should have done); a notice sent for a case that is not reinstated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, false, func, insert, or_, select, update

from reinstatement import incident_states, lifecycle
from reinstatement.claims import pending_work
from reinstatement.incident_states import IncidentStatus
from reinstatement.models import AuditEntry, Case, Incident, IncidentVersion, Notice
from reinstatement.platform_schema import accounts, enforcement_actions, pins, rule_versions
from reinstatement.states import PIPELINE_ACTOR, CaseState, NoticeState
from reinstatement.store.engine import utc_day, utcnow
from reinstatement.verdicts import Outcome

SAMPLE = 20


@dataclass
class UncoveredVersion:
    version: str
    rule_version_id: int
    standing_bans: int
    sample_accounts: list[int]
    # Per day of the bans' creation (UTC): {"day", "bans", "sample_accounts"}.
    by_day: list[dict[str, Any]] = field(default_factory=list)


# An incident covers a ban once it has had a real run: previewed by a dry run alone (or
# rejected) it restores nothing, and the ban must still be reported.
_COVERING = (IncidentStatus.AWAITING_APPROVAL, IncidentStatus.APPROVED,
             IncidentStatus.RUNNING, IncidentStatus.COMPLETED)


def _covered(conn: Connection) -> Any:
    """Whether a standing ban (enforcement_actions) is covered: an incident that has had a
    real run names its version, holds its time in its window (from the second round on,
    a ban after the window's end too: the incident's own rule banned again), and has a case
    for its account. One OR-clause per such incident (there are few), its window bound as
    parameters: the windows live in the incidents' parameters."""
    ea = enforcement_actions
    clauses = []
    for incident in conn.execute(
        select(Incident.id, Incident.params).where(
            Incident.status.in_([str(s) for s in _COVERING])).order_by(Incident.id)
    ):
        versions = list(conn.execute(
            select(IncidentVersion.faulty_rule_version_id)
            .where(IncidentVersion.incident_id == incident.id)).scalars())
        params = incident.params or {}
        since, until = params.get("since"), params.get("until")
        case_of = Case.__table__.alias()
        has_case = exists().where(case_of.c.incident_id == incident.id,
                                  case_of.c.account_id == ea.c.account_id)
        later_round = exists().where(case_of.c.incident_id == incident.id,
                                     case_of.c.account_id == ea.c.account_id,
                                     case_of.c.round > 1)
        inside: list[Any] = [ea.c.rule_version_id.in_(versions)]
        if since is not None:
            inside.append(ea.c.created_at >= datetime.fromisoformat(since))
        if until is not None:
            inside.append(or_(and_(ea.c.created_at < datetime.fromisoformat(until), has_case),
                              later_round))
        else:
            inside.append(has_case)
        clauses.append(and_(*inside))
    return or_(*clauses) if clauses else false()


def _uncovered_bans(conn: Connection) -> Any:
    """Standing rules-engine bans by versions the platform marks 'faulty' that no incident
    covers (`_covered`), with their version's name."""
    ea, rv = enforcement_actions, rule_versions
    return (
        select(ea.c.id, ea.c.account_id, ea.c.created_at, rv.c.id.label("version_id"),
               rv.c.rule_name, rv.c.version)
        .join(rv, rv.c.id == ea.c.rule_version_id)
        .where(ea.c.kind == "ban", ea.c.source == "rule", ea.c.reversed_at.is_(None),
               rv.c.status == "faulty", ~_covered(conn))
    ).subquery()


def uncovered_faulty_bans(conn: Connection) -> list[UncoveredVersion]:
    """Standing bans by versions marked 'faulty' that no incident covers, per version and
    per day, each with sample accounts."""
    base = _uncovered_bans(conn)
    day = utc_day(base.c.created_at).label("day")
    result = []
    for row in conn.execute(
        select(base.c.version_id, base.c.rule_name, base.c.version, func.count())
        .group_by(base.c.version_id, base.c.rule_name, base.c.version)
        .order_by(base.c.rule_name, base.c.version)
    ):
        version_id = row[0]
        sample = list(conn.execute(
            select(base.c.account_id).where(base.c.version_id == version_id)
            .order_by(base.c.account_id).limit(SAMPLE)).scalars())
        days = []
        for when, count in conn.execute(
            select(day, func.count()).where(base.c.version_id == version_id)
            .group_by(day).order_by(day)
        ):
            accounts = list(conn.execute(
                select(base.c.account_id).where(base.c.version_id == version_id,
                                                utc_day(base.c.created_at) == when)
                .order_by(base.c.account_id).limit(5)).scalars())
            days.append({"day": str(when), "bans": int(count), "sample_accounts": accounts})
        result.append(UncoveredVersion(f"{row.rule_name}@{row.version}", version_id,
                                       int(row[3]), sample, days))
    return result


def uncovered_account_ids(conn: Connection, rule_version_ids: list[int]) -> list[int]:
    """The accounts behind `uncovered_faulty_bans` for these versions."""
    base = _uncovered_bans(conn)
    return list(conn.execute(
        select(base.c.account_id).distinct()
        .where(base.c.version_id.in_(rule_version_ids)).order_by(base.c.account_id)
    ).scalars())


def incidents_to_resume(conn: Connection) -> list[str]:
    """Keys of running, approved or completed incidents that still have cases to verify or
    restore (a completed one: cases planned by a run that died before it began)."""
    keys = []
    for incident_id, key in conn.execute(
        select(Incident.id, Incident.key)
        .where(Incident.status.in_([str(s) for s in incident_states.RESUMABLE]
                                   + [str(IncidentStatus.COMPLETED)]))
        .order_by(Incident.id)
    ):
        work = pending_work(conn, incident_id)
        if work.get("verify") or work.get("restore"):
            keys.append(key)
    return keys


def incidents_awaiting_operator(conn: Connection) -> list[str]:
    return list(conn.execute(
        select(Incident.key).where(Incident.status == IncidentStatus.AWAITING_APPROVAL)
        .order_by(Incident.id)
    ).scalars())


@dataclass
class Reban:
    incident: str
    case_id: int
    account_id: int
    ban_ids: list[int]


def rebanned_accounts(conn: Connection) -> list[Reban]:
    """Reinstated accounts banned again, after their unban, by a faulty version of the
    same incident, whose latest round is the reinstated one."""
    ea, unban = enforcement_actions, enforcement_actions.alias("unban")
    case = Case.__table__.alias("latest")
    newer = Case.__table__.alias("newer")
    rows = conn.execute(
        select(Incident.key, case.c.id, case.c.account_id, ea.c.id.label("ban_id"))
        .select_from(case)
        .join(Incident, Incident.id == case.c.incident_id)
        .join(unban, unban.c.id == case.c.unban_action_id)
        .join(ea, and_(ea.c.account_id == case.c.account_id, ea.c.kind == "ban",
                       ea.c.reversed_at.is_(None), ea.c.created_at > unban.c.created_at))
        .join(IncidentVersion, and_(IncidentVersion.incident_id == case.c.incident_id,
                                    IncidentVersion.faulty_rule_version_id
                                    == ea.c.rule_version_id))
        .where(case.c.state == CaseState.RESTORED, ea.c.source == "rule",
               ~exists().where(newer.c.incident_id == case.c.incident_id,
                               newer.c.account_id == case.c.account_id,
                               newer.c.round > case.c.round))
        .order_by(case.c.id, ea.c.id)
    ).all()
    found: dict[int, Reban] = {}
    for key, case_id, account_id, ban_id in rows:
        found.setdefault(case_id, Reban(key, case_id, account_id, [])).ban_ids.append(ban_id)
    return list(found.values())


def open_next_round(conn: Connection, reban: Reban, actor: str = PIPELINE_ACTOR) -> int:
    """A new case for a re-banned account, in the same incident, planned for verification."""
    previous = conn.execute(select(Case.incident_id, Case.round).where(Case.id == reban.case_id)
                            ).one()
    now = utcnow()
    case_id = int(conn.execute(
        insert(Case).values(incident_id=previous.incident_id, account_id=reban.account_id,
                            round=previous.round + 1, state=CaseState.PLANNED,
                            created_at=now, updated_at=now)
        .returning(Case.id)
    ).scalar_one())
    conn.execute(insert(AuditEntry).values(
        incident_id=previous.incident_id, case_id=case_id, from_state=None,
        to_state=CaseState.PLANNED, actor=actor, at=now,
        reason=f"banned again after reinstatement (case {reban.case_id}) by "
               f"ban(s) {', '.join(map(str, reban.ban_ids))}",
    ))
    # The incident goes back to work even if it had completed.
    if lifecycle.current_state(conn, previous.incident_id, lock=True).status == (
            IncidentStatus.COMPLETED):
        lifecycle.transition(conn, previous.incident_id, IncidentStatus.RUNNING, actor,
                             f"account {reban.account_id} banned again by a faulty version")
    return case_id


@dataclass
class InvariantReport:
    banned_without_cause: list[dict[str, Any]] = field(default_factory=list)
    pins_left_hidden: list[dict[str, Any]] = field(default_factory=list)
    pins_repaired: int = 0
    notices_without_reinstatement: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unrepaired(self) -> int:
        left = 0 if self.pins_repaired else len(self.pins_left_hidden)
        return len(self.banned_without_cause) + len(self.notices_without_reinstatement) + left


def check_invariants(conn: Connection, *, repair: bool) -> InvariantReport:
    report = InvariantReport()
    ea = enforcement_actions
    # A reinstated account that is not active, though no enforcement action came after
    # the pipeline's unban and its owner did not close it: nothing explains it.
    unban = ea.alias("unban")
    later = ea.alias("later")
    for row in conn.execute(
        select(Case.id, Case.account_id, accounts.c.status)
        .join(accounts, accounts.c.id == Case.account_id)
        .join(unban, unban.c.id == Case.unban_action_id)
        .where(Case.state == CaseState.RESTORED,
               accounts.c.status.not_in(("active", "deactivated", "deleted")),
               ~exists().where(later.c.account_id == Case.account_id,
                               later.c.created_at > unban.c.created_at))
        .order_by(Case.id).limit(1000)
    ):
        report.banned_without_cause.append(
            {"case_id": row.id, "account_id": row.account_id, "status": row.status})

    # Pins still hidden by a ban that the pipeline reversed.
    reversed_ban = ea.alias("reversed_ban")
    ours = ea.alias("ours")
    hidden = (
        select(pins.c.id, pins.c.account_id, pins.c.hidden_by_action_id)
        .join(reversed_ban, reversed_ban.c.id == pins.c.hidden_by_action_id)
        .join(ours, ours.c.id == reversed_ban.c.reversed_by_action_id)
        .where(pins.c.status == "hidden", ours.c.source == "reinstatement",
               pins.c.account_id == reversed_ban.c.account_id)
        .order_by(pins.c.id)
    )
    report.pins_left_hidden = [
        {"pin_id": r.id, "account_id": r.account_id, "ban_id": r.hidden_by_action_id}
        for r in conn.execute(hidden.limit(1000))
    ]
    if repair and report.pins_left_hidden:
        ids = [p["pin_id"] for p in report.pins_left_hidden]
        report.pins_repaired = conn.execute(
            update(pins).where(pins.c.id.in_(ids), pins.c.status == "hidden")
            .values(status="visible", hidden_by_action_id=None, updated_at=utcnow())
        ).rowcount

    # A notice that went out for a case that is not a reinstatement.
    for row in conn.execute(
        select(Notice.id, Notice.case_id, Case.state, Case.outcome)
        .join(Case, Case.id == Notice.case_id)
        .where(Notice.state == NoticeState.SENT,
               (Case.state != CaseState.RESTORED) | (Case.outcome != str(Outcome.REINSTATED)))
        .order_by(Notice.id).limit(1000)
    ):
        report.notices_without_reinstatement.append(
            {"notice_id": row.id, "case_id": row.case_id, "state": row.state,
             "outcome": row.outcome})
    return report
