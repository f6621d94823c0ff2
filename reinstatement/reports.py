"""What an incident came to: counts per outcome and notice state, timings, and its cases."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, func, select

from reinstatement import failed_notices, incident_states, lifecycle, plan_records, plans
from reinstatement.batches import where_batches_ran
from reinstatement.incidents import load_incident
from reinstatement.models import Case, Decision, Incident, Notice, Run
from reinstatement.verdicts import Outcome

OUTCOMES = [str(o) for o in Outcome]


def incident_report(conn: Connection, key: str) -> dict[str, Any]:
    incident = load_incident(conn, key)
    row = conn.execute(select(Incident).where(Incident.id == incident.id)).one()
    outcomes = dict.fromkeys(OUTCOMES, 0)
    states: dict[str, int] = {}
    preview: dict[str, int] = {}
    for state, outcome, count in conn.execute(
        select(Case.state, Case.outcome, func.count())
        .where(Case.incident_id == incident.id)
        .group_by(Case.state, Case.outcome)
    ):
        states[state] = states.get(state, 0) + count
        if outcome is None:
            continue
        if state == "previewed":
            preview[outcome] = preview.get(outcome, 0) + count
        else:
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    notices = dict(conn.execute(
        select(Notice.state, func.count()).where(Notice.incident_id == incident.id)
        .group_by(Notice.state)
    ).all())
    pins_restored = conn.execute(
        select(func.coalesce(func.sum(Case.pins_restored), 0))
        .where(Case.incident_id == incident.id)
    ).scalar_one()
    all_runs = list(conn.execute(select(Run).where(Run.incident_id == incident.id)
                                 .order_by(Run.id)))
    runs = [
        {
            "flow_run_id": r.flow_run_id, "dry_run": r.dry_run, "status": r.status,
            "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "step_seconds": r.step_seconds or {},
            "host": r.host, "pid": r.pid,
            # Where its batches ran: this run's process, or its child runs' (per step).
            "workers": where_batches_ran(conn, r.id),
            "child_runs": dict(sorted(Counter(
                f"{c.step} {c.status}" for c in all_runs if c.parent_run_id == r.id
            ).items())),
        }
        for r in all_runs if r.parent_run_id is None
    ]
    lifecycle_state = lifecycle.current_state(conn, incident.id)
    failed = failed_notices.by_reason(conn, incident.id)
    words = lifecycle_state.describe()
    if failed:
        words += (f"; {failed_notices.describe(failed)}: `reinstate notices resend {key}` "
                  "sends them again once the mail server takes them")
    return {
        "incident": key,
        "status": row.status,
        "status_words": words,
        "failed_notices": failed,
        "require_approval": lifecycle_state.require_approval,
        "declared_by": _person(row.declared_by, row.declared_via),
        "plan": _plan(conn, lifecycle_state),
        "decision": _decision(conn, lifecycle_state),
        "faulty_versions": [
            {"faulty": v.faulty_name, "corrected": v.corrected_name}
            for v in incident.versions
        ],
        "window": {
            "since": incident.rules.since.isoformat() if incident.rules.since else None,
            "until": incident.rules.until.isoformat() if incident.rules.until else None,
        },
        "cases": sum(states.values()),
        "outcomes": outcomes,
        "preview_outcomes": preview,
        "case_states": states,
        "notices": notices,
        "pins_restored": int(pins_restored or 0),
        "runs": runs,
    }


OUTCOME_MEANINGS = {
    "reinstated": "every standing ban is a wrongful faulty ban: the account, its pins and a "
                  "notice come back",
    "needs_review": "a standing faulty ban is uncertain: a reviewer decides (nothing changes "
                    "until then)",
    "skipped": "not banned, not found, or no standing faulty ban: nothing changes",
    "upheld": "a standing faulty ban is confirmed by the corrected rule: the ban stays",
    "kept_other_ban": "another ban stands (a moderator's, another rule's, or outside the "
                      "window): the ban stays",
}


def would_restore(conn: Connection, incident_id: int, *, previewed: bool) -> dict[str, int]:
    """What restoring the reinstated cases as judged now would do: notices that would go
    out (accounts with an address, when the incident notifies) and pins that come back
    (hidden by the bans the restore reverses)."""
    from reinstatement.platform_schema import accounts, pins
    from reinstatement.store.bulk import chunks, id_in

    state = (Case.state == "previewed") if previewed else (Case.state == "verified")
    rows = conn.execute(select(Case.account_id, Case.standing_ban_ids).where(
        Case.incident_id == incident_id, Case.outcome == "reinstated", state)).all()
    notify = conn.execute(select(Incident.params).where(Incident.id == incident_id)
                          ).scalar_one().get("notify", True)
    account_ids = sorted(row.account_id for row in rows)
    ban_ids = sorted({int(b) for row in rows for b in (row.standing_ban_ids or [])})
    notices = 0
    if notify:
        for part in chunks(account_ids):
            notices += int(conn.execute(select(func.count()).select_from(accounts).where(
                id_in(conn, accounts.c.id, part), accounts.c.email.is_not(None))
            ).scalar_one())
    pins_back = 0
    for part in chunks(ban_ids):
        pins_back += int(conn.execute(select(func.count()).select_from(pins).where(
            id_in(conn, pins.c.hidden_by_action_id, part))).scalar_one())
    return {"notices": notices, "pins": pins_back}


def incident_rows(conn: Connection, status: str | None = None) -> list[dict[str, Any]]:
    """Every incident (of `status`), newest first: its status, plan, who declared and who
    decided, its counts and its last run."""
    query = select(Incident.key).order_by(Incident.id.desc())
    if status is not None:
        query = query.where(Incident.status == status)
    rows = []
    for key in conn.execute(query).scalars():
        report = incident_report(conn, key)
        last = report["runs"][-1] if report["runs"] else None
        decision = report["decision"]
        rows.append({
            "incident": key, "status": report["status"],
            "status_words": report["status_words"],
            "plan": None if report["plan"] is None else report["plan"]["short"],
            "declared_by": report["declared_by"],
            "decided_by": None if decision is None else decision["by"],
            "decision": None if decision is None else decision["decision"],
            "cases": report["cases"], "reinstated": report["outcomes"].get("reinstated", 0),
            "needs_review": report["outcomes"].get("needs_review", 0),
            "notices_sent": report["notices"].get("sent", 0),
            "notices_failed": report["notices"].get("failed", 0),
            "last_run": None if last is None else last["status"],
            "last_run_started": None if last is None else last["started_at"],
            "last_run_finished": None if last is None else last["finished_at"],
        })
    return rows


def iter_cases(conn: Connection, key: str, outcome: str | None = None,
               page: int = 5000) -> Iterator[dict[str, Any]]:
    """Every case of the incident, in id order, read page by page (keyset)."""
    incident = load_incident(conn, key)
    after = 0
    while True:
        query = (
            select(Case, Notice.state.label("notice_state"))
            .outerjoin(Notice, Notice.case_id == Case.id)
            .where(Case.incident_id == incident.id, Case.id > after)
            .order_by(Case.id)
            .limit(page)
        )
        if outcome is not None:
            query = query.where(Case.outcome == outcome)
        rows = conn.execute(query).all()
        if not rows:
            return
        for case in rows:
            yield {
                "case_id": case.id,
                "account_id": case.account_id,
                "outcome": case.outcome,
                "state": case.state,
                "preview": case.state == "previewed",
                "reasons": case.reasons,
                "unban_action_id": case.unban_action_id,
                "pins_restored": case.pins_restored,
                "notice": case.notice_state,
            }
        after = rows[-1].id


_VIA_WORDS = {"cli": "OS login on the command line", "database-role": "database role",
              "prefect-ui": "the Prefect UI", "before-plans": "recorded before plans"}


def _person(name: str | None, via: str | None) -> str | None:
    """A declarer or decider as the report names them: who, and how that was known."""
    if not name:
        return None
    return f"{name} ({_VIA_WORDS.get(via or '', via or 'unknown')})"


def _plan_state(state: incident_states.IncidentState, plan: plans.PlanRef) -> str:
    if plan.decision is not None:
        return f"{plan.decision}d"
    if state.status == incident_states.IncidentStatus.AWAITING_APPROVAL:
        return "awaiting approval"
    return "no decision needed" if not state.require_approval else "not decided"


def _plan(conn: Connection, state: incident_states.IncidentState) -> dict[str, Any] | None:
    plan = state.plan
    if plan is None:
        return None
    return {"id": plan.id, "digest": plan.digest, "short": plan.short, "cases": plan.cases,
            "dry_run": plan.dry_run, "created_at": plan.created_at.isoformat(),
            "created_by": plan.created_by, "decision": plan.decision,
            "state": _plan_state(state, plan),
            "counts": plan_records.verdict_counts(conn, plan.id)}


def _decision(conn: Connection, state: incident_states.IncidentState) -> dict[str, Any] | None:
    decided = state.decision
    if decided is None:
        return None
    plan = None
    if decided.plan_id is not None:
        plan = next((p.short for p in plan_records.plans_of(conn, state.id)
                     if p.id == decided.plan_id), None)
    return {"decision": decided.decision, "by": _person(decided.by, decided.via),
            "name": decided.by, "via": decided.via, "operator": decided.operator,
            "note": decided.note, "at": decided.at.isoformat(), "plan": plan}


def plan_report(conn: Connection, key: str) -> dict[str, Any]:
    """The incident's newest plan, every decision taken on its plans, and earlier plans."""
    incident = load_incident(conn, key)
    state = lifecycle.current_state(conn, incident.id)
    shorts = {p.id: p.short for p in plan_records.plans_of(conn, incident.id)}
    decisions = [
        {"decision": d.decision, "by": d.decided_by, "via": _VIA_WORDS.get(d.decided_via,
                                                                         d.decided_via),
         "operator": d.operator, "database_role": d.database_role, "note": d.note,
         "at": d.decided_at.isoformat(), "plan": shorts.get(d.plan_id or -1)}
        for d in conn.execute(select(Decision).where(Decision.incident_id == incident.id)
                              .order_by(Decision.id)).scalars()]
    return {
        "incident": key,
        "status": str(state.status),
        "require_approval": state.require_approval,
        "declared_by": _person(state.declared_by, state.declared_via),
        "plan": _plan(conn, state),
        "decisions": decisions,
        "earlier_plans": [{"digest": p.digest, "short": p.short, "cases": p.cases,
                           "dry_run": p.dry_run, "created_at": p.created_at.isoformat(),
                           "decision": p.decision}
                          for p in plan_records.plans_of(conn, incident.id)[:-1]],
    }
