"""Plan: a case for each candidate account of an incident, page by page.

Candidates are the accounts the incident's account list names, or else the accounts
with a standing ban by one of its faulty versions within its window. Planning is
idempotent: a case that exists already is kept, and a rerun resumes after the highest
account planned (`planned_through`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Text,
    bindparam,
    func,
    insert,
    null,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from reinstatement.audit import write_audit
from reinstatement.incidents import RegisteredIncident
from reinstatement.models import AuditEntry, Case, IncidentAccount
from reinstatement.platform_schema import enforcement_actions
from reinstatement.states import PIPELINE_ACTOR, CaseState
from reinstatement.store import store_for
from reinstatement.store.bulk import chunks, id_in
from reinstatement.store.engine import utcnow


def _candidate_filter(conn: Connection, incident: RegisteredIncident, after_account_id: int,
                      before_account_id: int | None) -> tuple[Any, list[Any]]:
    """The column of candidate account ids and the conditions that pick the incident's
    candidates after `after_account_id` (and before `before_account_id`, if given)."""
    column: Any
    if incident.has_account_list:
        column = IncidentAccount.account_id
        conditions = [IncidentAccount.incident_id == incident.id]
    else:
        ea = enforcement_actions
        column = ea.c.account_id
        conditions = [
            ea.c.kind == "ban",
            ea.c.source == "rule",
            ea.c.reversed_at.is_(None),
            # The faulty versions' ids as values, not a subquery: the planner then sees
            # how many bans they cover, walks the account index from `after_account_id`
            # and stops at the page's end, where it read and sorted every ban for each page.
            id_in(conn, ea.c.rule_version_id, sorted(incident.rules.faulty)),
        ]
        if incident.rules.since is not None:
            conditions.append(ea.c.created_at >= incident.rules.since)
        if incident.rules.until is not None:
            conditions.append(ea.c.created_at < incident.rules.until)
    conditions.append(column > after_account_id)
    if before_account_id is not None:
        conditions.append(column < before_account_id)
    return column, conditions


def candidate_id_range(conn: Connection, incident: RegisteredIncident) -> tuple[int, int] | None:
    """The lowest and the highest candidate account id now (None: no candidate); each
    found through the account index from its end."""
    column, conditions = _candidate_filter(conn, incident, 0, None)
    first, last = conn.execute(select(func.min(column), func.max(column)).where(*conditions)
                               ).one()
    return None if first is None else (int(first), int(last))


def plan_batch(conn: Connection, incident: RegisteredIncident, after_account_id: int,
               limit: int, before_account_id: int | None = None) -> tuple[int, int | None]:
    """Create cases for the next `limit` candidate accounts after `after_account_id`
    (and before `before_account_id`, if given).

    Returns (cases created, last account id seen); None when there are no more
    candidates. Idempotent: a case that exists already is left as it is.
    """
    column, conditions = _candidate_filter(conn, incident, after_account_id, before_account_id)
    source = select(column).where(*conditions).order_by(column).limit(limit)
    if not incident.has_account_list:
        source = source.distinct()
    if store_for(conn).set_based_batches:
        return _plan_in_the_database(conn, incident, source)
    account_ids = list(conn.execute(source).scalars())
    if not account_ids:
        return 0, None
    existing: set[int] = set()
    for chunk in chunks(account_ids):
        existing.update(conn.execute(
            select(Case.account_id).where(Case.incident_id == incident.id,
                                          id_in(conn, Case.account_id, chunk))
        ).scalars())
    now = utcnow()
    new = [
        {"incident_id": incident.id, "account_id": account_id, "state": CaseState.PLANNED,
         "created_at": now, "updated_at": now}
        for account_id in account_ids if account_id not in existing
    ]
    created = 0
    if new:
        # Another run of the incident may be planning the same page right now: a case it
        # created first is kept, and only the cases created here are audited here.
        case_ids = _insert_cases(conn, new)
        write_audit(conn, incident.id, ((case_id, None, CaseState.PLANNED, "candidate account")
                                   for case_id in case_ids), PIPELINE_ACTOR)
        created = len(case_ids)
    return created, account_ids[-1]


def _plan_in_the_database(conn: Connection, incident: RegisteredIncident, source: Any
                          ) -> tuple[int, int | None]:
    """One statement: the page of candidates, a case for each that has none (another run
    may be planning the same page: ON CONFLICT keeps the case it made first), and an audit
    row for each case made here."""
    page = source.cte("page")
    now = bindparam(None, utcnow(), type_=DateTime(timezone=True))
    created = (
        postgresql.insert(Case)
        .from_select(["incident_id", "account_id", "state", "created_at", "updated_at"],
                     select(bindparam(None, incident.id, type_=BigInteger), page.c.account_id,
                            bindparam(None, CaseState.PLANNED, type_=Text), now, now))
        .on_conflict_do_nothing()
        .returning(Case.id)
        .cte("created")
    )
    audited = insert(AuditEntry).from_select(
        ["incident_id", "case_id", "from_state", "to_state", "actor", "reason", "at"],
        select(bindparam(None, incident.id, type_=BigInteger), created.c.id, null(),
               bindparam(None, CaseState.PLANNED, type_=Text),
               bindparam(None, PIPELINE_ACTOR, type_=Text),
               bindparam(None, "candidate account", type_=Text), now)
    ).cte("audited")
    row = conn.execute(select(
        select(func.max(page.c.account_id)).scalar_subquery(),
        select(func.count()).select_from(created).scalar_subquery(),
    ).add_cte(audited)).one()
    return (0, None) if row[0] is None else (int(row[1]), int(row[0]))


def _insert_cases(conn: Connection, new: list[dict[str, Any]]) -> Sequence[int]:
    """Insert planned cases, skipping any another run created first; the new cases' ids.
    (SQLite: PostgreSQL plans in one statement, `_plan_in_the_database`.)"""
    return conn.execute(
        sqlite.insert(Case).on_conflict_do_nothing().returning(Case.id), new
    ).scalars().all()


def planned_through(conn: Connection, incident_id: int) -> int:
    """The highest account id planned so far: planning resumes after it."""
    return conn.execute(
        select(func.coalesce(func.max(Case.account_id), 0)).where(Case.incident_id == incident_id)
    ).scalar_one()

