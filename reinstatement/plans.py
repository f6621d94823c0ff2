"""Plans: what a preview showed an operator, fixed once written and named by a digest.

A plan holds every case of an incident as it stood when the plan was made: the case, its
account and round, its verdict, and the bans it would reverse. Its digest is the sha256
of those lines (`plan_digest`, the reference; PostgreSQL's `reinstatement_plan_digest`
makes the same text from the stored entries). An operator approves a plan by its digest,
and a restore of an incident that requires approval writes only what the incident's
newest plan holds, once approved (`reinstatement.approval`).

Every preview makes a plan, and a plan is new only when the judgement changed: a case
added (a new candidate, a new round), or judged otherwise, or its bans changed. Restoring
a plan's cases does not change it, nor does a reviewer's decision (a reviewed case keeps
the verdict `needs_review` in its line): the same judgement gives the same digest, and an
approval stays good until something the operator has not seen appears.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow

DIGEST_HEADER = "reinstatement-plan/1 {key}\n"
# The verdicts whose bans a plan lists: a restore may reverse them (a reinstatement, or an
# uncertain case a reviewer then decides to reinstate).
RESTORING_VERDICTS = ("reinstated", "needs_review")
# A verdict written after a reviewer decided: the judgement they decided on.
REVIEWED = "needs_review"


@dataclass(frozen=True)
class PlanEntry:
    """One case as a plan holds it."""

    case_id: int
    account_id: int
    round: int
    verdict: str  # '' when the case was not judged yet
    ban_ids: str  # ascending, comma-separated; '' unless the verdict restores

    def line(self) -> str:
        return (f"{self.case_id} {self.account_id} {self.round} {self.verdict} "
                f"{self.ban_ids}\n")


def ban_ids_text(ban_ids: Iterable[int] | None) -> str:
    """Ban ids as a plan holds them: distinct, ascending, comma-separated."""
    return ",".join(str(i) for i in sorted({int(b) for b in ban_ids or ()}))


def verdict_of(outcome: str | None, review_decision: str | None) -> str:
    """A case's verdict in a plan: its outcome, or `needs_review` once a reviewer decided."""
    if review_decision is not None:
        return REVIEWED
    return outcome or ""


def entry_of(case_id: int, account_id: int, round_: int, outcome: str | None,
             review_decision: str | None, standing_ban_ids: Sequence[int] | None
             ) -> PlanEntry:
    verdict = verdict_of(outcome, review_decision)
    bans = ban_ids_text(standing_ban_ids) if verdict in RESTORING_VERDICTS else ""
    return PlanEntry(case_id, account_id, round_, verdict, bans)


def plan_digest(incident_key: str, entries: Iterable[PlanEntry]) -> str:
    """The digest of a plan's entries, given in case order (the reference)."""
    digest = hashlib.sha256(DIGEST_HEADER.format(key=incident_key).encode())
    for entry in entries:
        digest.update(entry.line().encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PlanRef:
    """A plan and what was decided on it."""

    id: int
    digest: str
    cases: int
    dry_run: bool
    created_at: datetime
    created_by: str
    decision: str | None  # 'approve', 'reject', or None: nobody decided yet

    @property
    def approved(self) -> bool:
        return self.decision == "approve"

    @property
    def short(self) -> str:
        """The first 12 hex digits: what the operator reads and may type."""
        return self.digest[:12]


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


@dataclass(frozen=True)
class PlanMade:
    """The outcome of `make_plan`: the newest plan, and whether this call wrote it."""

    plan: PlanRef
    new: bool
    previous: PlanRef | None


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


def describe_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{verdict} {n:,}" for verdict, n in counts.items())
    return f"{total:,} case(s)" + (f": {parts}" if parts else "")


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
