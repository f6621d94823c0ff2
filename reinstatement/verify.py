"""Verify: judge a batch of claimed cases and record each outcome with its reasons.

On PostgreSQL the database decides a batch in one statement (verdict_sql.py) and writes
its cases and audit rows itself; elsewhere, and for the cases whose reasons must name
unknown signals, Python decides (verdicts.decide, the reference). What verification
hands the restore (`Verdict`, `RestoreTarget`, `RestoreBatch`) is defined here too.
Each function takes a connection inside a transaction the caller owns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Integer,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy import case as sql_case

from reinstatement.audit import write_audit
from reinstatement.batches import StepResult
from reinstatement.claims import ClaimedCase, claim_cases
from reinstatement.facts import decide_accounts
from reinstatement.incidents import RegisteredIncident
from reinstatement.models import AuditEntry, Case
from reinstatement.states import PIPELINE_ACTOR, CaseState
from reinstatement.store import store_for, verdict_sql
from reinstatement.store.bulk import StatementCache, update_many
from reinstatement.store.engine import utcnow
from reinstatement.store.verdict_sql import (
    ArrayText,
    array_literal,
    listed_text,
)
from reinstatement.verdicts import (
    CaseDecision,
    Outcome,
)

STATE_AFTER_VERIFY = {
    Outcome.REINSTATED: CaseState.VERIFIED,
    Outcome.NEEDS_REVIEW: CaseState.REVIEW,
    Outcome.SKIPPED: CaseState.CLOSED,
    Outcome.UPHELD: CaseState.CLOSED,
    Outcome.KEPT_OTHER_BAN: CaseState.CLOSED,
}


def case_update(case_id: int, decision: CaseDecision, state: str, now: datetime
                 ) -> dict[str, Any]:
    return {
        "id": case_id, "state": state, "outcome": str(decision.outcome),
        "reasons": decision.reasons, "faulty_ban_ids": list(decision.faulty_ban_ids),
        "standing_ban_ids": list(decision.standing_ban_ids), "updated_at": now,
    }


_CASE_DECISION_COLUMNS = {
    "state": Text, "outcome": Text, "reasons": JSON, "faulty_ban_ids": JSON,
    "standing_ban_ids": JSON, "updated_at": DateTime(timezone=True),
}


def update_cases(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Record each case's state, outcome and reasons (rows as `case_update` makes them)."""
    update_many(conn, Case.__table__, updates, _CASE_DECISION_COLUMNS)


def verify_batch(conn: Connection, incident: RegisteredIncident, limit: int, *,
                 preview: bool, actor: str = PIPELINE_ACTOR) -> StepResult:
    """Judge the next batch of planned cases and record each outcome with its reasons.

    A preview (dry run) records outcomes as 'previewed'; a real run verifies planned
    and previewed cases again against the data as it is now. On PostgreSQL the database
    decides the batch (verdict_sql.py) and writes its cases and audit rows itself; only
    cases whose reasons must name unknown signals are decided here, in Python.
    """
    states = [CaseState.PLANNED] if preview else [CaseState.PLANNED, CaseState.PREVIEWED]
    claimed = claim_cases(conn, incident.id, states, limit)
    result = StepResult()
    if not claimed:
        return result
    if store_for(conn).set_based_batches:
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


_VERIFY_STATEMENTS = StatementCache()


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
                      result: StepResult, *, restoring: bool = False
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


