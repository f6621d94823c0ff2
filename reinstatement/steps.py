"""The pipeline's steps on one batch of cases: plan, verify, restore.

Each function takes a connection inside a transaction the caller owns, works on one
batch, and leaves its result in the pipeline's tables, so the next step (or a rerun
after a crash) reads exactly where this one stopped:

    planned ──verify──▶ verified ──restore──▶ restored        (outcome reinstated)
       │                   └──────────────▶ closed | review  (other outcomes)
       ├──settle─────────────────────────▶ restored | closed | review
       │    (verify and restore in one transaction, when the incident may restore now)
       └──verify (dry run)──▶ previewed   (a real run verifies again)

Work is claimed with SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL, so two runs of one
incident, or several workers, never take the same case; on SQLite every transaction
holds the database's write lock from its start (see db.py), which serialises claims.

Nothing here knows about Prefect: the tasks in `tasks/` are thin wrappers.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import case as sql_case
from sqlalchemy.dialects import postgresql, sqlite

from reinstatement import verdict_sql
from reinstatement.conditions import decode_evidence
from reinstatement.db import utcnow
from reinstatement.incidents import RegisteredIncident
from reinstatement.models import AuditEntry, Case, IncidentAccount, PlanCase
from reinstatement.platform_schema import accounts, enforcement_actions
from reinstatement.states import PIPELINE_ACTOR, CaseState
from reinstatement.verdict_sql import (
    ArrayText,
    array_literal,
    judged_bans,
    listed_text,
    standing_bans_query,
)
from reinstatement.verdict_sql import array as _array
from reinstatement.verdicts import (
    AccountFacts,
    CaseDecision,
    IncidentRules,
    Outcome,
    StandingBan,
    decide,
)

IN_CHUNK = 5000  # ids per IN (...) list: well under SQLite's limit on bound variables


class _StatementCache:
    """Statements built once and executed for each batch with named parameters (SQLAlchemy
    then compiles each once too), kept for the last few keys (incidents) a process used.
    Building one, conditions compiled to SQL and all, cost more of the flow's CPU than
    what Python does with a batch's rows."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._built: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        with self._lock:
            statement = self._built.get(key)
            if statement is not None:
                self._built.move_to_end(key)
                return statement
        statement = build()
        with self._lock:
            self._built[key] = statement
            while len(self._built) > self._size:
                self._built.popitem(last=False)
        return statement


def id_in(conn: Connection, column: Any, ids: Sequence[int]) -> Any:
    """`column IN ids`; on PostgreSQL as `= ANY(:array)`, one parameter.

    An IN list of thousands of placeholders makes a statement psycopg parses again on
    every execution (it caches only short ones): the scale benchmark found that parsing
    among the largest costs of verify and restore. An array keeps the statement short.
    """
    if conn.dialect.name == "postgresql":
        return column == any_(_array(BigInteger, ids))
    return column.in_(ids)


def chunks(ids: Sequence[int], size: int = IN_CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def write_audit(conn: Connection, incident_id: int,
                rows: Iterable[tuple[int | None, str | None, str, str]], actor: str) -> None:
    """Append one audit row per (case_id, from_state, to_state, reason)."""
    now = utcnow()
    entries = [
        {"incident_id": incident_id, "case_id": case_id, "from_state": before,
         "to_state": after, "actor": actor, "reason": reason, "at": now}
        for case_id, before, after, reason in rows
    ]
    # As one INSERT ... SELECT FROM unnest(arrays) on PostgreSQL: as an executemany the
    # audit rows (one per case and step) were a seventh of the scale benchmark's time.
    insert_many(conn, AuditEntry, entries, {
        "incident_id": BigInteger, "case_id": BigInteger, "from_state": Text,
        "to_state": Text, "actor": Text, "reason": Text, "at": DateTime(timezone=True)})


def audit_incident(conn: Connection, incident_id: int, before: str | None, after: str,
                   actor: str, reason: str) -> None:
    write_audit(conn, incident_id, [(None, before, after, reason)], actor)


# -- plan -------------------------------------------------------------------------------

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
    if conn.dialect.name == "postgresql":
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


def insert_many(conn: Connection, table: Any, rows: list[dict[str, Any]],
                 element_types: dict[str, Any]) -> None:
    """INSERT rows; on PostgreSQL as one INSERT ... SELECT FROM unnest(arrays).

    `element_types` names the columns written (others take their defaults) and the type
    of each; as an executemany, a batch's notices and unbans cost a statement each.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), [{name: row[name] for name in element_types}
                                     for row in rows])
        return
    source = _json_rows(rows, element_types)
    conn.execute(insert(table).from_select(
        list(element_types), select(*(source.c[name] for name in element_types))))


def planned_through(conn: Connection, incident_id: int) -> int:
    """The highest account id planned so far: planning resumes after it."""
    return conn.execute(
        select(func.coalesce(func.max(Case.account_id), 0)).where(Case.incident_id == incident_id)
    ).scalar_one()


# -- facts ------------------------------------------------------------------------------

@dataclass
class AccountRecord:
    id: int
    status: str
    username: str
    display_name: str | None
    email: str | None
    locale: str


def load_accounts(conn: Connection, account_ids: Sequence[int], *,
                  lock: bool = False) -> dict[int, AccountRecord]:
    found: dict[int, AccountRecord] = {}
    for chunk in chunks(sorted(account_ids)):
        query = (
            select(accounts.c.id, accounts.c.status, accounts.c.username,
                   accounts.c.display_name, accounts.c.email, accounts.c.locale)
            .where(id_in(conn, accounts.c.id, chunk))
            .order_by(accounts.c.id)
        )
        if lock and conn.dialect.name == "postgresql":
            lock_platform_rows(conn, chunk)
        for row in conn.execute(query):
            found[row.id] = AccountRecord(*row)
    return found


def lock_platform_rows(conn: Connection, account_ids: Sequence[int]) -> None:
    """Lock the accounts and their standing bans until the transaction ends (PostgreSQL).

    Accounts in id order, so concurrent batches cannot deadlock, then their standing bans:
    a moderator's action cannot slip in between our check and our write. The pipeline's
    role may not UPDATE the platform's tables, which SELECT ... FOR UPDATE requires, so
    the owner's function `reinstatement_lock_accounts` (migration 0006) takes the locks.
    Rows read after it are the latest committed ones.
    """
    conn.execute(select(func.reinstatement_lock_accounts(_array(BigInteger, account_ids))))


def load_standing_bans(conn: Connection, account_ids: Sequence[int],
                       rules: IncidentRules | None = None) -> dict[int, list[StandingBan]]:
    """The accounts' standing bans; under a restore, `load_accounts(lock=True)` locked them.

    With the incident's `rules`, the database judges each ban by a named faulty version:
    the corrected version's condition, compiled to SQL (condition_sql.py), is evaluated
    on the ban's evidence where it lies. A ban it judges true or false comes back with that
    truth and without its evidence; only a ban it finds unknown brings its evidence text,
    decoded here (decode_evidence) so the case's reasons can name the signals.
    """
    bans: dict[int, list[StandingBan]] = defaultdict(list)
    postgresql_ = conn.dialect.name == "postgresql"
    for chunk in chunks(sorted(account_ids)):
        if postgresql_:  # one statement for every batch, the accounts as a parameter
            judged = _STANDING_BANS.get(("postgresql", repr(rules)), lambda: judged_bans(
                "postgresql", standing_bans_query(
                    enforcement_actions.c.account_id == any_(verdict_sql.array_param(
                        "ban_accounts", BigInteger))), rules))
            rows = conn.execute(judged, {"ban_accounts": array_literal(BigInteger, chunk)})
        else:
            rows = conn.execute(judged_bans(conn.dialect.name, standing_bans_query(
                enforcement_actions.c.account_id.in_(chunk)), rules))
        for row in rows:
            name = None if row.rule_name is None else f"{row.rule_name}@{row.version}"
            truth = None if row.truth is None else bool(row.truth)
            bans[row.account_id].append(StandingBan(
                action_id=row.id, source=row.source, rule_version_id=row.rule_version_id,
                rule_name=name, created_at=row.created_at,
                evidence=None if truth is not None else decode_evidence(row.evidence_text),
                corrected_truth=truth,
            ))
    return bans


_STANDING_BANS = _StatementCache()


def rules_for_round(incident: RegisteredIncident, round_: int) -> IncidentRules:
    """The incident's rules; from the second round on, without the window's end.

    A later round is an account the incident reinstated and a faulty version of the same
    incident banned again afterwards: that new ban falls after the window by nature, and
    is judged like the incident's own bans.
    """
    if round_ <= 1:
        return incident.rules
    return IncidentRules(faulty=incident.rules.faulty, since=incident.rules.since, until=None)


def decide_accounts(conn: Connection, incident: RegisteredIncident,
                    cases: Sequence[ClaimedCase], *, lock: bool = False
                    ) -> tuple[dict[int, CaseDecision], dict[int, AccountRecord]]:
    """Each case's decision by the contract's rules, keyed by case id."""
    account_ids = [c.account_id for c in cases]
    found = load_accounts(conn, account_ids, lock=lock)
    bans = load_standing_bans(conn, account_ids, incident.rules)
    decisions = {}
    for case in cases:
        record = found.get(case.account_id)
        facts = AccountFacts(case.account_id, None if record is None else record.status)
        decisions[case.id] = decide(facts, bans.get(case.account_id, []),
                                    rules_for_round(incident, case.round))
    return decisions, found


# -- claims -----------------------------------------------------------------------------

@dataclass
class ClaimedCase:
    id: int
    account_id: int
    state: str
    outcome: str | None
    standing_ban_ids: list[int] | None
    round: int = 1
    review_decision: str | None = None
    # As the approved plan holds the case (a restore of an incident that requires
    # approval claims only cases that plan holds): its verdict and bans.
    plan_verdict: str | None = None
    plan_ban_ids: str | None = None


def claim_cases(conn: Connection, incident_id: int, states: Sequence[str], limit: int,
                outcome: str | None = None, case_ids: Sequence[int] | None = None,
                plan_id: int | None = None) -> list[ClaimedCase]:
    """Take up to `limit` cases in `states`, locked for this transaction: state by state in
    the order given, each in id order. With `plan_id`, only the cases that plan holds
    with a verdict that restores (`_held_by_plan`).

    One state at a time, because the index (incident_id, state, id) then hands the cases
    over in id order and the scan stops at `limit`. With `state IN (...)` PostgreSQL read
    every case of both states and sorted them for each batch: at 1M accounts, 685,000
    cases sorted on disk, 200 ms a batch.
    """
    claimed: list[ClaimedCase] = []
    for state in dict.fromkeys(states):
        if len(claimed) >= limit:
            break
        query = (
            select(Case.id, Case.account_id, Case.state, Case.outcome, Case.standing_ban_ids,
                   Case.round, Case.review_decision)
            .where(Case.incident_id == incident_id, Case.state == state)
            .order_by(Case.id)
            .limit(limit - len(claimed))
        )
        if outcome is not None:
            query = query.where(Case.outcome == outcome)
        if case_ids is not None:
            query = query.where(Case.id.in_(case_ids))
        if plan_id is not None:
            query = _held_by_plan(query, plan_id).add_columns(PlanCase.verdict,
                                                              PlanCase.ban_ids)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(of=Case, skip_locked=True)
        claimed.extend(ClaimedCase(*row) for row in conn.execute(query).all())
    return claimed


def _held_by_plan(query: Any, plan_id: int) -> Any:
    """Only the cases the plan holds for this account with a verdict that restores: a
    reinstatement, or an uncertain case a reviewer decided to reinstate."""
    return query.join(PlanCase, and_(
        PlanCase.plan_id == bindparam(None, plan_id, type_=BigInteger),
        PlanCase.case_id == Case.id, PlanCase.account_id == Case.account_id,
        or_(PlanCase.verdict == str(Outcome.REINSTATED),
            and_(PlanCase.verdict == str(Outcome.NEEDS_REVIEW),
                 Case.review_decision == "reinstate"))))


# -- verify -----------------------------------------------------------------------------

STATE_AFTER_VERIFY = {
    Outcome.REINSTATED: CaseState.VERIFIED,
    Outcome.NEEDS_REVIEW: CaseState.REVIEW,
    Outcome.SKIPPED: CaseState.CLOSED,
    Outcome.UPHELD: CaseState.CLOSED,
    Outcome.KEPT_OTHER_BAN: CaseState.CLOSED,
}


@dataclass
class BatchResult:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    pins_restored: int = 0
    notices_queued: int = 0
    changed_since_verification: int = 0
    restored: int = 0  # accounts a settle batch restored (outcomes counts its verdicts)



def case_update(case_id: int, decision: CaseDecision, state: str, now: datetime
                 ) -> dict[str, Any]:
    return {
        "id": case_id, "state": state, "outcome": str(decision.outcome),
        "reasons": decision.reasons, "faulty_ban_ids": list(decision.faulty_ban_ids),
        "standing_ban_ids": list(decision.standing_ban_ids), "updated_at": now,
    }


def _json_rows(rows: list[dict[str, Any]], types: dict[str, Any]) -> Any:
    """Rows as PostgreSQL's json_to_recordset(one JSON parameter) AS t(name type, ...).

    A batch's per-row values travel as ONE JSON document that the C encoder writes
    (datetimes as ISO 8601 text): psycopg dumps text arrays element by element through a
    regular expression, which cost verify more than a second per 5,000 cases in the scale
    benchmark (the reasons of each case are long text).
    """
    document = json.dumps([{name: row[name] for name in types} for row in rows],
                          default=_json_default)
    return func.json_to_recordset(cast(bindparam(None, document, type_=Text), JSON)
                                  ).table_valued(*[column(name, kind)
                                                   for name, kind in types.items()]
                                                 ).render_derived(with_types=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def update_many(conn: Connection, table: Any, rows: list[dict[str, Any]],
                 types: dict[str, Any], *, where: Sequence[Any] = (),
                 fixed: dict[str, Any] | None = None) -> int:
    """UPDATE each row (by its "id") with its own values; returns the rows changed.

    `types` names the per-row columns and their types (JSON columns travel as text and
    are cast back); `where` adds guards, `fixed` values the same for every row. On
    PostgreSQL it is one UPDATE ... FROM unnest(arrays); elsewhere an executemany.
    """
    if not rows:
        return 0
    fixed = fixed or {}
    if conn.dialect.name != "postgresql":
        statement = (
            update(table).where(table.c.id == bindparam("row_id"), *where)
            .values(**{name: bindparam(f"row_{name}") for name in types}, **fixed)
        )
        return conn.execute(statement, [
            {"row_id": row["id"], **{f"row_{name}": row[name] for name in types}}
            for row in rows
        ]).rowcount
    source = _json_rows(rows, {"id": BigInteger, **types})
    values = {name: source.c[name] for name in types}
    return conn.execute(
        update(table).where(table.c.id == source.c.id, *where).values(**values, **fixed)
    ).rowcount


_CASE_DECISION_COLUMNS = {
    "state": Text, "outcome": Text, "reasons": JSON, "faulty_ban_ids": JSON,
    "standing_ban_ids": JSON, "updated_at": DateTime(timezone=True),
}


def update_cases(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Record each case's state, outcome and reasons (rows as `case_update` makes them)."""
    update_many(conn, Case.__table__, updates, _CASE_DECISION_COLUMNS)


def verify_batch(conn: Connection, incident: RegisteredIncident, limit: int, *,
                 preview: bool, actor: str = PIPELINE_ACTOR) -> BatchResult:
    """Judge the next batch of planned cases and record each outcome with its reasons.

    A preview (dry run) records outcomes as 'previewed'; a real run verifies planned
    and previewed cases again against the data as it is now. On PostgreSQL the database
    decides the batch (verdict_sql.py) and writes its cases and audit rows itself; only
    cases whose reasons must name unknown signals are decided here, in Python.
    """
    states = [CaseState.PLANNED] if preview else [CaseState.PLANNED, CaseState.PREVIEWED]
    claimed = claim_cases(conn, incident.id, states, limit)
    result = BatchResult()
    if not claimed:
        return result
    if conn.dialect.name == "postgresql":
        decided = verify_in_the_database(conn, incident, claimed, preview, actor)
        for outcome, count in decided.items():
            result.outcomes[outcome] += count
        claimed_by_id = {case.id: case for case in claimed}
        rest = [claimed_by_id[case_id] for case_id in decided.python]
    else:
        rest = claimed
    if rest:
        verify_in_python(conn, incident, rest, preview, actor, result)
    result.cases = len(claimed)
    return result


def within_cases(first_case: int, last_case: int) -> Any:
    """`Case.id BETWEEN` the lowest and highest id of the batch.

    Said beside the join on the ids, it lets the planner read just the batch's stretch of
    the table through the primary key: joined alone (to a CTE or to arrays, whose rows it
    cannot see), every case of the table was read and hashed for each batch, 40 ms at 100k
    accounts and growing with the table. (The ids as an array would do it too, but a plan
    that filters every row against a 5,000-element array is quadratic.)
    """
    return Case.id.between(bindparam(None, first_case, type_=BigInteger),
                           bindparam(None, last_case, type_=BigInteger))


def _state_after(outcome: Any, preview: bool, restoring: bool) -> Any:
    """The case's state after verification, as a SQL expression of its outcome.

    `restoring` (a settle batch): a reinstatement is written as `restored` at once, as the
    restore in the same transaction leaves it. The restore then changes no indexed column
    of its row, and PostgreSQL writes that version beside this one without an index entry
    (migration 0011).
    """
    if preview:
        return bindparam(None, CaseState.PREVIEWED, type_=Text)
    after = dict(STATE_AFTER_VERIFY)
    if restoring:
        after[Outcome.REINSTATED] = CaseState.RESTORED
    return sql_case(*[(outcome == bindparam(None, str(o), type_=Text),
                       bindparam(None, state, type_=Text))
                      for o, state in after.items()])


class _Decided(Counter[str]):
    """Outcome counts of the cases the database decided, and the cases left to Python."""

    python: list[int]
    restore: RestoreBatch | None  # with `restoring`: the reinstatements to restore


def verify_in_the_database(conn: Connection, incident: RegisteredIncident,
                            claimed: Sequence[ClaimedCase], preview: bool, actor: str, *,
                            restoring: bool = False) -> _Decided:
    """One statement: the batch's verdicts, the cases updated from them, and their audit.

    `restoring`: the batch restores its reinstatements next, in this transaction. They
    come back as one row of arrays in PostgreSQL's text form, what the restore takes
    (`RestoreBatch`), passed on as they are: no reinstatement goes through Python one by
    one. Their audit row is left to the restore, which writes one for the whole way
    (`RestoreBatch.one_audit_row`).
    """
    now = utcnow()
    case_ids = [c.id for c in claimed]
    parameters: dict[str, Any] = verdict_sql.batch_parameters(
        case_ids, [c.account_id for c in claimed], [c.round for c in claimed],
        [c.state for c in claimed])
    parameters.update(first_case=min(case_ids), last_case=max(case_ids), verified_at=now,
                      audited_at=now, actor=actor)
    decided = _Decided()
    decided.python, decided.restore = [], None
    statement = _verify_statement(incident, preview, restoring)
    # The verdicts are read three times (the case updates, the rows returned, the counts),
    # so PostgreSQL keeps them, about 1 KB a case: past the server's default work_mem
    # (4 MB) it wrote them to a temporary file and read them back, each batch.
    verdict_sql.keep_ban_order(conn, work_mem=_verify_work_mem(len(claimed)))
    for row in conn.execute(statement, parameters).all():
        if row.restore_count:
            decided.restore = RestoreBatch(
                size=row.restore_count, case_ids=ArrayText(row.restore_case_ids),
                account_ids=ArrayText(row.restore_account_ids),
                rounds=ArrayText(row.restore_rounds),
                prior_states=ArrayText(row.restore_prior_states),
                ban_ids=ArrayText(row.restore_ban_ids),
                ban_accounts=ArrayText(row.restore_ban_accounts),
                first_case=row.restore_first_case, last_case=row.restore_last_case,
                first_account=row.restore_first_account,
                last_account=row.restore_last_account, one_audit_row=True)
        elif row.python:
            decided.python.append(row.case_id)
        else:
            decided[row.outcome] += row.n
    return decided


def _verify_work_mem(cases: int) -> str:
    """Memory for one batch's verdict statement: 4 KB a case, at least 16 MB."""
    return f"{max(16, -(-cases * 4 // 1024))}MB"


_VERIFY_STATEMENTS = _StatementCache()


def _verify_statement(incident: RegisteredIncident, preview: bool, restoring: bool) -> Any:
    """`verify_in_the_database`'s statement for this incident, built once: the same for
    each of its batches, which come as named parameters."""
    return _VERIFY_STATEMENTS.get(
        (incident.id, incident.key, repr(incident.rules), preview, restoring),
        lambda: _build_verify_statement(incident, preview, restoring))


def _build_verify_statement(incident: RegisteredIncident, preview: bool, restoring: bool
                            ) -> Any:
    verdicts = verdict_sql.verdicts(incident.rules).cte("verdicts")
    v = verdicts.c
    within = Case.id.between(bindparam("first_case", type_=BigInteger),
                             bindparam("last_case", type_=BigInteger))
    updated = (
        update(Case)
        .where(Case.id == v.case_id, within, v.python.is_(False))
        .values(state=_state_after(v.outcome, preview, restoring), outcome=v.outcome,
                reasons=v.reasons, faulty_ban_ids=v.faulty_ban_ids,
                standing_ban_ids=v.standing_ban_ids,
                updated_at=bindparam("verified_at", type_=Case.__table__.c.updated_at.type))
        .returning(Case.id, Case.state, v.prior_state, v.outcome, v.summary)
        .cte("updated")
    )
    u = updated.c
    reinstated = bindparam(None, str(Outcome.REINSTATED), type_=Text)
    audit_rows = select(bindparam(None, incident.id, type_=BigInteger), u.id, u.prior_state,
                        u.state, bindparam("actor", type_=Text),
                        u.outcome + ": " + u.summary,
                        bindparam("audited_at", type_=DateTime(timezone=True)))
    if restoring:
        audit_rows = audit_rows.where(u.outcome != reinstated)
    audited = insert(AuditEntry).from_select(
        ["incident_id", "case_id", "from_state", "to_state", "actor", "reason", "at"],
        audit_rows).cte("audited")
    # One row for each case Python decides; the others as a count per outcome (most of a
    # batch's rows, not fetched); with `restoring`, the reinstatements as one row of arrays.
    no_arrays = [cast(null(), Text).label(f"restore_{name}") for name in _RESTORE_ARRAYS]
    no_bounds = [cast(null(), BigInteger).label(f"restore_{name}") for name in _RESTORE_BOUNDS]
    nothing_to_restore = literal(0, BigInteger).label("restore_count")
    one_by_one = v.python.is_(True)
    cases = select(v.case_id, v.outcome, v.python, literal(1).label("n"),
                   *no_arrays, *no_bounds, nothing_to_restore).where(one_by_one)
    counted = select(null(), v.outcome, literal(False), func.count().label("n"),
                     *no_arrays, *no_bounds, nothing_to_restore
                     ).where(~one_by_one).group_by(v.outcome)
    parts = [cases, counted]
    if restoring:
        parts.append(_restore_arrays(incident, verdicts))
    return union_all(*parts).add_cte(updated, audited)


# What a settle batch's verdict statement hands the restore, as arrays in text form, all in
# the order of the accounts (the restore function's order), and the bounds of the batch.
_RESTORE_ARRAYS = ("case_ids", "account_ids", "rounds", "prior_states", "ban_ids",
                   "ban_accounts")
_RESTORE_BOUNDS = ("first_case", "last_case", "first_account", "last_account")


def _restore_arrays(incident: RegisteredIncident, verdicts: Any) -> Any:
    """One row (none when nothing is to be restored): the reinstatements the database
    decided, as `RestoreBatch` takes them, each array read back as text."""
    v = verdicts.c
    to_restore = v.python.is_(False) & (v.outcome == bindparam(
        None, str(Outcome.REINSTATED), type_=Text))
    in_order = (v.account_id, v.case_id)

    def listed(value: Any) -> Any:
        return listed_text(value, *in_order)

    bans = func.unnest(v.standing_ids).table_valued(
        "ban_id", with_ordinality="n").render_derived("bans")
    by_ban = (v.account_id, v.case_id, bans.c.n)
    ban_ids, ban_accounts = (
        select(listed_text(column_, *by_ban))
        .select_from(verdicts.join(bans, literal(True))).where(to_restore).scalar_subquery()
        for column_ in (bans.c.ban_id, v.account_id))
    arrays = {"case_ids": listed(v.case_id), "account_ids": listed(v.account_id),
              "rounds": listed(v.round), "prior_states": listed(v.prior_state),
              "ban_ids": ban_ids,
              "ban_accounts": ban_accounts}
    bounds = {"first_case": func.min(v.case_id), "last_case": func.max(v.case_id),
              "first_account": func.min(v.account_id), "last_account": func.max(v.account_id)}
    return (select(cast(null(), BigInteger), cast(null(), Text), literal(False), literal(0),
                   *[arrays[name].label(f"restore_{name}") for name in _RESTORE_ARRAYS],
                   *[bounds[name].label(f"restore_{name}") for name in _RESTORE_BOUNDS],
                   func.count().label("restore_count"))
            .where(to_restore).having(func.count() > 0))


def verify_in_python(conn: Connection, incident: RegisteredIncident,
                      claimed: Sequence[ClaimedCase], preview: bool, actor: str,
                      result: BatchResult, *, restoring: bool = False
                      ) -> list[tuple[ClaimedCase, Verdict, RestoreTarget, str]]:
    """Decide these cases in Python and record them.

    `restoring`: as for `verify_in_the_database`; returns the reinstatements to restore
    in this transaction, each with the verdict's summary, and leaves their audit row to the
    restore.
    """
    decisions, found = decide_accounts(conn, incident, claimed)
    now = utcnow()
    updates, audit_rows = [], []
    to_restore: list[tuple[ClaimedCase, Verdict, RestoreTarget, str]] = []
    for case in claimed:
        decision = decisions[case.id]
        state = CaseState.PREVIEWED if preview else STATE_AFTER_VERIFY[decision.outcome]
        updates.append(case_update(case.id, decision, state, now))
        summary = str(decision.reasons.get("summary", ""))
        result.outcomes[str(decision.outcome)] += 1
        record = found.get(case.account_id)
        if restoring and decision.outcome == Outcome.REINSTATED and record is not None:
            to_restore.append((replace(case, standing_ban_ids=list(decision.standing_ban_ids)),
                               Verdict.of(decision),
                               RestoreTarget(record.id, record.email, record.locale), summary))
            continue
        audit_rows.append((case.id, case.state, state, f"{decision.outcome}: {summary}"))
    update_cases(conn, updates)
    write_audit(conn, incident.id, audit_rows, actor)
    return to_restore


# -- what verification hands the restore (reinstatement/restore.py) --------------

@dataclass(frozen=True)
class Verdict:
    """What a restore needs of a case's judgement under lock."""

    outcome: str
    standing_ban_ids: tuple[int, ...]
    faulty_names: tuple[str, ...]  # the distinct faulty versions, sorted

    @classmethod
    def of(cls, decision: CaseDecision) -> Verdict:
        names = {str(b["faulty_version"]) for b in decision.reasons.get("faulty_bans", [])  # type: ignore[attr-defined]
                 if isinstance(b, dict)}
        return cls(str(decision.outcome), tuple(decision.standing_ban_ids),
                   tuple(sorted(names)))


@dataclass(frozen=True)
class RestoreTarget:
    """The account a restore writes to, and where its notice goes."""

    id: int
    email: str | None
    locale: str


@dataclass
class RestoreBatch:
    """A batch to restore on PostgreSQL, as the parallel arrays its statements take, in
    PostgreSQL's text form (`verdict_sql.ArrayText`): one entry per account (in the order
    the restore function returns them), and its bans."""

    size: int  # accounts
    case_ids: ArrayText
    account_ids: ArrayText
    rounds: ArrayText
    prior_states: ArrayText  # each case's state before this transaction
    ban_ids: ArrayText
    ban_accounts: ArrayText
    first_case: int
    last_case: int
    first_account: int
    last_account: int
    # Verified and restored in one transaction (`settle_batch`): one audit row each, from
    # the state it was claimed in, saying the verdict's summary and the restore.
    one_audit_row: bool = False

    @classmethod
    def of(cls, incident: RegisteredIncident,
           to_restore: list[tuple[ClaimedCase, Verdict, RestoreTarget]]) -> RestoreBatch:
        case_ids = [case.id for case, _, _ in to_restore]
        account_ids = [record.id for _, _, record in to_restore]

        def text_of(item_type: Any, values: Sequence[Any]) -> ArrayText:
            return ArrayText(array_literal(item_type, values))

        return cls(
            size=len(to_restore),
            case_ids=text_of(BigInteger, case_ids),
            account_ids=text_of(BigInteger, account_ids),
            rounds=text_of(Integer, [case.round for case, _, _ in to_restore]),
            prior_states=text_of(Text, [case.state for case, _, _ in to_restore]),
            ban_ids=text_of(BigInteger, [ban_id for _, verdict, _ in to_restore
                                         for ban_id in verdict.standing_ban_ids]),
            ban_accounts=text_of(BigInteger, [record.id for _, verdict, record in to_restore
                                              for _ in verdict.standing_ban_ids]),
            first_case=min(case_ids), last_case=max(case_ids),
            first_account=min(account_ids), last_account=max(account_ids),
        )


# -- counts -----------------------------------------------------------------------------

def pending_work(conn: Connection, incident_id: int, restore_plan: int | None = None
                 ) -> dict[str, int]:
    """How many cases wait for each step. `restore_plan`: the approved plan an incident
    that requires approval restores from; only the cases it holds wait for the restore."""
    # Only the states a step takes: through the (incident, state) index, so a finished
    # incident's closed and restored cases are not read at all.
    rows = conn.execute(
        select(Case.state, Case.outcome, func.count())
        .where(Case.incident_id == incident_id,
               Case.state.in_([CaseState.PLANNED, CaseState.PREVIEWED]))
        .group_by(Case.state, Case.outcome)
    ).all()
    counts: Counter[str] = Counter()
    for state, _, n in rows:
        counts["verify"] += n
        if state == CaseState.PLANNED:
            counts["preview"] += n
    restorable = select(func.count()).select_from(Case).where(
        Case.incident_id == incident_id, Case.state == CaseState.VERIFIED,
        Case.outcome == str(Outcome.REINSTATED))
    if restore_plan is not None:
        restorable = _held_by_plan(restorable, restore_plan)
    counts["restore"] = int(conn.execute(restorable).scalar_one())
    return {step: n for step, n in counts.items() if n}
