"""Plans in the database: making an incident's plan, reading plans and their entries back.

What a plan is, its entries and its digest, are `reinstatement.plans`'s (plain Python);
this module writes them in the caller's transaction and reads them with SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Text,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import case as sql_case
from sqlalchemy.dialects.postgresql import aggregate_order_by

from reinstatement.incidents import RegisteredIncident
from reinstatement.models import AuditEntry, Case, Decision, Incident, Plan, PlanCase
from reinstatement.plans import (
    RESTORING_VERDICTS,
    REVIEWED,
    PlanEntry,
    PlanMade,
    PlanRef,
    describe_counts,
    entry_of,
    plan_digest,
)
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow


def _plan_query() -> Any:
    decided = (select(Decision.decision).where(Decision.plan_id == Plan.id)
               .order_by(Decision.id).limit(1).scalar_subquery())
    return select(Plan.id, Plan.digest, Plan.cases, Plan.dry_run, Plan.created_at,
                  Plan.created_by, decided.label("decision"))


def _ref(row: Any) -> PlanRef:
    return PlanRef(row.id, row.digest or "", row.cases, row.dry_run, row.created_at,
                   row.created_by, row.decision)


def newest_plan(conn: Connection, incident_id: int) -> PlanRef | None:
    """The incident's newest plan: the only one an approval or a restore may name."""
    row = conn.execute(_plan_query().where(Plan.incident_id == incident_id)
                       .order_by(Plan.id.desc()).limit(1)).first()
    return None if row is None else _ref(row)


def plans_of(conn: Connection, incident_id: int) -> list[PlanRef]:
    """Every plan of the incident, oldest first."""
    return [_ref(row) for row in conn.execute(
        _plan_query().where(Plan.incident_id == incident_id).order_by(Plan.id))]


def find_plan(conn: Connection, incident_id: int, digest: str) -> PlanRef | None:
    """The incident's plan whose digest is or starts with `digest` (at least 8 digits)."""
    digest = digest.strip().lower()
    matches = [p for p in plans_of(conn, incident_id) if p.digest.startswith(digest)]
    return matches[-1] if len(digest) >= 8 and matches else None


def verdict_counts(conn: Connection, plan_id: int) -> dict[str, int]:
    """How many cases of the plan have each verdict."""
    return {verdict or "not judged": int(n) for verdict, n in conn.execute(
        select(PlanCase.verdict, func.count()).where(PlanCase.plan_id == plan_id)
        .group_by(PlanCase.verdict).order_by(PlanCase.verdict))}


def plan_entries(conn: Connection, plan_id: int, page: int = 5000) -> Iterator[PlanEntry]:
    """The plan's entries in case order, read page by page (keyset)."""
    after = 0
    while True:
        rows = conn.execute(
            select(PlanCase.case_id, PlanCase.account_id, PlanCase.round, PlanCase.verdict,
                   PlanCase.ban_ids)
            .where(PlanCase.plan_id == plan_id, PlanCase.case_id > after)
            .order_by(PlanCase.case_id).limit(page)).all()
        if not rows:
            return
        for row in rows:
            yield PlanEntry(row.case_id, row.account_id, row.round, row.verdict, row.ban_ids)
        after = rows[-1].case_id


def stored_digest(conn: Connection, plan_id: int, incident_key: str) -> str:
    """The digest of the entries the plan holds, computed where they are."""
    if store_for(conn).owner_functions:
        return str(conn.execute(select(func.reinstatement_plan_digest(
            bindparam(None, plan_id, type_=BigInteger)))).scalar_one())
    return plan_digest(incident_key, plan_entries(conn, plan_id))


class _Unchanged(Exception):
    """The judgement is the newest plan's: the plan just written is rolled back."""

    def __init__(self, previous: PlanRef) -> None:
        self.previous = previous


def make_plan(conn: Connection, incident: RegisteredIncident, actor: str, *,
              dry_run: bool) -> PlanMade:
    """The incident's plan for its cases as they are judged now: the newest plan if the
    judgement is the same, else a new plan written in the caller's transaction (and
    audited). The incident's row is locked first, so two runs never write two plans for
    one judgement.

    Raises `_Unchanged` only to `make_plan_in_transaction`, which rolls the new plan back.
    """
    lock = select(Incident.id).where(Incident.id == incident.id)
    lock = store_for(conn).locked(lock)  # SQLite: the transaction holds the write lock
    conn.execute(lock).one()
    previous = newest_plan(conn, incident.id)
    now = utcnow()
    plan_id = int(conn.execute(insert(Plan).values(
        incident_id=incident.id, digest=None, cases=0, dry_run=dry_run,
        created_by=actor[:200], created_at=now).returning(Plan.id)).scalar_one())
    if store_for(conn).set_based_batches:
        conn.execute(_entries_from_cases(incident.id, plan_id))
        cases = int(conn.execute(select(func.count()).select_from(PlanCase).where(
            PlanCase.plan_id == plan_id)).scalar_one())
        digest = stored_digest(conn, plan_id, incident.key)
    else:
        entries = list(_entries_in_python(conn, incident.id))
        digest = plan_digest(incident.key, entries)
        if previous is not None and previous.digest == digest:
            raise _Unchanged(previous)
        for start in range(0, len(entries), 5000):
            conn.execute(insert(PlanCase), [
                {"plan_id": plan_id, **vars(entry)} for entry in entries[start:start + 5000]])
        cases = len(entries)
    if previous is not None and previous.digest == digest:
        raise _Unchanged(previous)
    conn.execute(update(Plan).where(Plan.id == plan_id, Plan.digest.is_(None))
                 .values(digest=digest, cases=cases))
    counts = verdict_counts(conn, plan_id)
    conn.execute(insert(AuditEntry).values(
        incident_id=incident.id, case_id=None, from_state=None, to_state="plan",
        actor=actor[:200], at=now,
        reason=(f"{'dry run ' if dry_run else ''}plan {digest[:12]} ({digest}): "
                f"{describe_counts(counts)}"
                + (f"; supersedes plan {previous.short}" if previous else ""))))
    made = newest_plan(conn, incident.id)
    assert made is not None and made.id == plan_id
    return PlanMade(made, True, previous)


def make_plan_in_transaction(engine: Any, incident: RegisteredIncident, actor: str, *,
                             dry_run: bool) -> PlanMade:
    """`make_plan` in a transaction of its own (retried after a transient failure)."""
    from reinstatement.retrying import in_transaction

    try:
        return in_transaction(engine, lambda conn: make_plan(conn, incident, actor,
                                                             dry_run=dry_run))
    except _Unchanged as same:
        return PlanMade(same.previous, False, same.previous)


def _verdict_sql() -> Any:
    return sql_case((Case.review_decision.is_not(None), literal(REVIEWED, Text)),
                    else_=func.coalesce(Case.outcome, literal("", Text)))


def _entries_from_cases(incident_id: int, plan_id: int) -> Any:
    """PostgreSQL: the plan's entries from the incident's cases, in one statement."""
    element = func.json_array_elements_text(Case.standing_ban_ids).table_valued(
        "value").render_derived("ban")
    bans = (select(func.string_agg(element.c.value, aggregate_order_by(
        literal(",", Text), element.c.value.cast(BigInteger))))
            .select_from(element).scalar_subquery())
    verdict = _verdict_sql()
    ban_ids = sql_case((verdict.in_(RESTORING_VERDICTS), func.coalesce(bans, literal("", Text))),
                       else_=literal("", Text))
    return insert(PlanCase).from_select(
        ["plan_id", "case_id", "account_id", "round", "verdict", "ban_ids"],
        select(bindparam(None, plan_id, type_=BigInteger), Case.id, Case.account_id,
               Case.round, verdict, ban_ids).where(Case.incident_id == incident_id))


def _entries_in_python(conn: Connection, incident_id: int) -> Iterator[PlanEntry]:
    """SQLite: the plan's entries from the incident's cases, in case order."""
    after = 0
    while True:
        rows = conn.execute(
            select(Case.id, Case.account_id, Case.round, Case.outcome, Case.review_decision,
                   Case.standing_ban_ids)
            .where(Case.incident_id == incident_id, Case.id > after)
            .order_by(Case.id).limit(5000)).all()
        if not rows:
            return
        for row in rows:
            yield entry_of(row.id, row.account_id, row.round, row.outcome,
                           row.review_decision, row.standing_ban_ids)
        after = rows[-1].id


def incident_key(conn: Connection, incident_id: int) -> str:
    return str(conn.execute(select(Incident.key).where(Incident.id == incident_id)
                            ).scalar_one())
