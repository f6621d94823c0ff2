"""Restoring reinstated cases: settle (verify and restore in one pass) and restore.

Each account is judged again under lock before anything is written; on PostgreSQL the
platform writes go through the owner's function `reinstatement_restore_accounts`
(sql/functions/), and a second statement records the cases, notices and audit rows from
its result; on SQLite they are plain statements. The steps before it (plan, verify, the
claims and the facts) are in `claims.py`, `facts.py` and `verify.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Integer,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy import case as sql_case
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from reinstatement.approval import Permit
from reinstatement.audit import write_audit
from reinstatement.batches import StepResult
from reinstatement.claims import ClaimedCase, claim_cases
from reinstatement.facts import decide_accounts, lock_platform_rows
from reinstatement.incidents import RegisteredIncident
from reinstatement.models import AuditEntry, Case, Notice
from reinstatement.notices.render import message_id_for
from reinstatement.platform_schema import accounts, enforcement_actions, pins
from reinstatement.states import PIPELINE_ACTOR, CaseState, NoticeState
from reinstatement.store import store_for, verdict_sql
from reinstatement.store.bulk import chunks, id_in, insert_many, update_many
from reinstatement.store.engine import utcnow
from reinstatement.store.verdict_sql import (
    ArrayText,
    listed_text,
)
from reinstatement.store.verdict_sql import array as _array
from reinstatement.store.verdict_sql import array_rows as _array_rows
from reinstatement.verdicts import (
    CaseDecision,
    Outcome,
)
from reinstatement.verify import (
    STATE_AFTER_VERIFY,
    RestoreBatch,
    RestoreTarget,
    Verdict,
    case_update,
    update_cases,
    verify_batch,
    verify_in_python,
    verify_in_the_database,
    within_cases,
)

# -- settle: verify and restore in one pass --------------------------------------------

def settle_batch(conn: Connection, incident: RegisteredIncident, limit: int, *,
                 restoring: bool, sender_domain: str, actor: str = PIPELINE_ACTOR
                 ) -> StepResult:
    """Verify the next batch of planned cases and restore its reinstatements at once.

    For a real run of an incident that may restore now (`restoring`, which the caller read
    under the incident's share lock): no approval stands between verification and restore,
    so each account is judged once, under the locks the restore needs, and restored in the
    same transaction. The cases come out as verify and restore would leave them (the same
    outcome, reasons, unban and pins); a reinstated case's audit row is one transition,
    from the state it was claimed in to restored, naming the verdict and the restore, as
    no other transaction ever saw it verified. What is saved is the second claim, lock and
    verdict, and an audit row for each reinstatement. Without `restoring` it is
    `verify_batch`.
    """
    if not restoring:
        return verify_batch(conn, incident, limit, preview=False, actor=actor)
    claimed = claim_cases(conn, incident.id, [CaseState.PLANNED, CaseState.PREVIEWED], limit)
    result = StepResult()
    if not claimed:
        return result
    result.cases = len(claimed)
    restored = StepResult()
    now = utcnow()
    rest: Sequence[ClaimedCase] = claimed
    if store_for(conn).owner_functions:
        # Judged under the restore's locks: nothing can change between verdict and restore.
        lock_platform_rows(conn, sorted({c.account_id for c in claimed}))
        decided = verify_in_the_database(conn, incident, claimed, False, actor,
                                          restoring=True)
        result.outcomes.update(decided)
        by_id = {case.id: case for case in claimed}
        rest = [by_id[case_id] for case_id in decided.python]
        if decided.restore is not None:
            _restore_on_postgresql(conn, incident, decided.restore, now, sender_domain,
                                   restored, actor)
    # The cases whose reasons name unknown signals (all of them on SQLite, where the
    # transaction holds the database's write lock from its start).
    if rest:
        to_restore = verify_in_python(conn, incident, rest, False, actor, result,
                                       restoring=True)
        if to_restore:
            to_restore.sort(key=lambda item: item[2].id)
            audit_rows: list[tuple[int | None, str | None, str, str]] = []
            _apply_restores(conn, incident, [(c, v, t) for c, v, t, _ in to_restore], now,
                            sender_domain, restored, audit_rows, actor,
                            summaries={c.id: summary for c, _, _, summary in to_restore})
            write_audit(conn, incident.id, audit_rows, actor)
    result.restored = restored.outcomes[str(Outcome.REINSTATED)]
    result.pins_restored = restored.pins_restored
    result.notices_queued = restored.notices_queued
    return result


# -- restore ----------------------------------------------------------------------------

# The unban's reason, in Python's % and PostgreSQL's format() alike (the owner's restore
# function writes it in SQL): the incident's key, the faulty versions' names.
UNBAN_REASON = "Reinstated by incident %s: the ban by %s was a mistake"
ANY_FAULTY = "a faulty rule version"


def _unban_reason(incident: RegisteredIncident, verdict: Verdict) -> str:
    """The unban's reason: the incident, and the verdict's faulty versions."""
    return UNBAN_REASON % (incident.key, ", ".join(verdict.faulty_names) or ANY_FAULTY)


def _judge_for_restore(conn: Connection, incident: RegisteredIncident,
                       claimed: Sequence[ClaimedCase]
                       ) -> dict[int, tuple[Verdict, RestoreTarget | None]]:
    """Each claimed case judged again, its platform rows locked first.

    On PostgreSQL the database judges the batch (verdict_sql.py) and Python only the cases
    whose bans are unknown on their evidence; elsewhere Python judges them all.
    """
    judged: dict[int, tuple[Verdict, RestoreTarget | None]] = {}
    rest = list(claimed)
    if store_for(conn).owner_functions:
        lock_platform_rows(conn, sorted({c.account_id for c in claimed}))
        rest = []
        by_id = {case.id: case for case in claimed}
        for row in verdict_sql.fetch(conn, incident.rules, claimed, reasons=False):
            if row.python:
                rest.append(by_id[row.case_id])
                continue
            target = None if row.locale is None else RestoreTarget(row.account_id, row.email,
                                                                   row.locale)
            names = tuple(row.faulty_names.split(", ")) if row.faulty_names else ()
            judged[row.case_id] = (Verdict(row.outcome, tuple(row.standing_ids), names),
                                   target)
    if rest:
        decisions, found = decide_accounts(conn, incident, rest, lock=True)
        for case in rest:
            record = found.get(case.account_id)
            judged[case.id] = (Verdict.of(decisions[case.id]), None if record is None else
                               RestoreTarget(record.id, record.email, record.locale))
    return judged


def restore_batch(conn: Connection, incident: RegisteredIncident, limit: int, permit: Permit,
                  *, sender_domain: str, actor: str = PIPELINE_ACTOR,
                  case_ids: Sequence[int] | None = None) -> StepResult:
    """Restore the next batch of verified cases whose outcome is reinstated, and that
    `permit` (read in this transaction) allows: for an incident that requires approval,
    only cases its approved plan holds.

    In this one transaction, per account: status 'active', one 'unban' action, each
    standing ban reversed by it, exactly the pins those bans hid made visible, the
    case's checkpoint and its outbox notice. Each account is first judged again under
    lock: one whose bans changed since verification, or since the plan, is not touched,
    and its case records what it is now (which a new plan then shows).
    """
    claimed = claim_cases(conn, incident.id, [CaseState.VERIFIED], limit,
                          outcome=str(Outcome.REINSTATED), case_ids=case_ids,
                          plan_id=permit.plan_id)
    result = StepResult()
    if not claimed:
        return result
    judged = _judge_for_restore(conn, incident, claimed)
    now = utcnow()
    to_restore: list[tuple[ClaimedCase, Verdict, RestoreTarget]] = []
    changed: list[ClaimedCase] = []
    audit_rows: list[tuple[int | None, str | None, str, str]] = []
    for case in claimed:
        verdict, target = judged[case.id]
        same_bans = sorted(case.standing_ban_ids or []) == list(verdict.standing_ban_ids)
        # A reviewer may decide an uncertain case: reinstated, as long as nothing about its
        # bans changed since they looked.
        reviewed = (case.review_decision == "reinstate"
                    and verdict.outcome == Outcome.NEEDS_REVIEW)
        planned = permit.allows(case.plan_verdict, case.plan_ban_ids, case.review_decision,
                                verdict.standing_ban_ids)
        if (verdict.outcome == Outcome.REINSTATED or reviewed) and same_bans and planned \
                and target is not None:
            to_restore.append((case, verdict, target))
        else:
            changed.append(case)
    if changed:
        _record_changed(conn, incident, changed, now, result, audit_rows)
    if to_restore:
        _apply_restores(conn, incident, to_restore, now, sender_domain, result, audit_rows,
                        actor)
    write_audit(conn, incident.id, audit_rows, actor)
    result.cases = len(claimed)
    return result


def _record_changed(conn: Connection, incident: RegisteredIncident,
                    changed: Sequence[ClaimedCase], now: datetime, result: StepResult,
                    audit_rows: list[tuple[int | None, str | None, str, str]]) -> None:
    """The platform moved since verification (a moderator acted, a ban was lifted or
    added): never overwrite that. Record each account's outcome as it is now, with its
    reasons; if it would still be reinstated but by other bans, a person looks first."""
    decisions, _ = decide_accounts(conn, incident, changed)  # the rows are locked already
    updates = []
    for case in changed:
        decision = decisions[case.id]
        if decision.outcome == Outcome.REINSTATED:
            reasons = dict(decision.reasons)
            reasons["summary"] = ("needs review: the account's bans changed between "
                                  "verification (or the approved plan) and restore")
            decision = CaseDecision(Outcome.NEEDS_REVIEW, decision.faulty_ban_ids,
                                    decision.standing_ban_ids, reasons)
        state = STATE_AFTER_VERIFY[decision.outcome]
        updates.append(case_update(case.id, decision, state, now))
        audit_rows.append((case.id, case.state, state,
                           f"changed since verification: now {decision.outcome}"))
        result.outcomes[str(decision.outcome)] += 1
        result.changed_since_verification += 1
    update_cases(conn, updates)


def _insert_unbans(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the unban actions; their ids, in the order of `rows` (SQLite)."""
    ea = enforcement_actions
    return list(conn.execute(
        insert(ea).returning(ea.c.id, sort_by_parameter_order=True), rows
    ).scalars().all())


class RestoreConflict(RuntimeError):
    """A platform row changed under the restore although it was locked: roll back."""


def _apply_restores(conn: Connection, incident: RegisteredIncident,
                    to_restore: list[tuple[ClaimedCase, Verdict, RestoreTarget]],
                    now: datetime, sender_domain: str, result: StepResult,
                    audit_rows: list[tuple[int | None, str | None, str, str]],
                    actor: str, *, summaries: dict[int, str] | None = None) -> None:
    """Restore these cases; `summaries` (verified in this same transaction): each case's
    verdict summary, for its one audit row from the state it was claimed in."""
    if store_for(conn).owner_functions:
        batch = RestoreBatch.of(incident, to_restore)
        batch.one_audit_row = summaries is not None
        _restore_on_postgresql(conn, incident, batch, now, sender_domain, result, actor)
        return
    unban_ids, pins_by_account = _restore_with_statements(conn, incident, to_restore, now)

    case_updates, notices = [], []
    for (case, _, record), unban_id in zip(to_restore, unban_ids, strict=True):
        restored = pins_by_account.get(record.id, 0)
        case_updates.append({"id": case.id, "unban_action_id": unban_id,
                             "pins_restored": restored})
        notice_state = (NoticeState.SUPPRESSED if not incident.notify
                        else NoticeState.PENDING if record.email else NoticeState.NO_ADDRESS)
        notices.append({
            "case_id": case.id, "incident_id": incident.id, "account_id": record.id,
            "message_id": message_id_for(notice_key(incident.key, case.round), record.id,
                                         sender_domain),
            "recipient": record.email, "locale": record.locale, "state": notice_state,
            "attempts": 0, "next_attempt_at": now if notice_state == NoticeState.PENDING
            else None, "created_at": now, "updated_at": now,
        })
        restored_words = f"unban action {unban_id}, {restored} pins restored"
        audit_rows.append((case.id, case.state, CaseState.RESTORED, (
            f"reinstated: {restored_words}" if summaries is None
            else f"reinstated: {summaries[case.id]}; {restored_words}")))
        result.outcomes[str(Outcome.REINSTATED)] += 1
        result.pins_restored += restored
        result.notices_queued += notice_state == NoticeState.PENDING
    update_many(conn, Case.__table__, case_updates,
                 {"unban_action_id": BigInteger, "pins_restored": Integer},
                 fixed={"state": CaseState.RESTORED, "updated_at": now})
    insert_many(conn, Notice, notices, {
        "case_id": BigInteger, "incident_id": BigInteger, "account_id": BigInteger,
        "message_id": Text, "recipient": Text, "locale": Text, "state": Text,
        "attempts": Integer, "next_attempt_at": DateTime(timezone=True),
        "created_at": DateTime(timezone=True), "updated_at": DateTime(timezone=True)})


def _restore_with_statements(conn: Connection, incident: RegisteredIncident,
                             to_restore: list[tuple[ClaimedCase, Verdict, RestoreTarget]],
                             now: datetime) -> tuple[list[int], Counter[int]]:
    """The platform writes of a restore as plain statements (SQLite)."""
    ea = enforcement_actions
    activated = sum(
        conn.execute(
            update(accounts)
            .where(id_in(conn, accounts.c.id, chunk), accounts.c.status == "banned")
            .values(status="active", updated_at=now)
        ).rowcount
        for chunk in chunks([record.id for _, _, record in to_restore])
    )
    if activated != len(to_restore):
        raise RestoreConflict("an account left 'banned' during the restore; nothing was kept")
    unban_ids = _insert_unbans(conn, [
        {"account_id": record.id, "kind": "unban", "source": "reinstatement",
         "rule_version_id": None, "actor": PIPELINE_ACTOR,
         "reason": _unban_reason(incident, decision), "evidence": None,
         "created_at": now, "reversed_at": None, "reversed_by_action_id": None}
        for _, decision, record in to_restore
    ])
    reversals = [
        {"id": ban_id, "reversed_by_action_id": unban_id}
        for (_, decision, _), unban_id in zip(to_restore, unban_ids, strict=True)
        for ban_id in decision.standing_ban_ids
    ]
    reversed_count = update_many(conn, ea, reversals, {"reversed_by_action_id": BigInteger},
                                  where=[ea.c.reversed_at.is_(None)],
                                  fixed={"reversed_at": now})
    if reversed_count != len(reversals):
        raise RestoreConflict("a ban was lifted by someone else during the restore")
    return unban_ids, _restore_pins(conn, [r["id"] for r in reversals], now)


def _message_id_sql(incident_key: str, round_: Any, account_id: Any, domain: str) -> Any:
    """`message_id_for` in SQL: the same sha256 of the same bytes, the same text around it."""
    message_id_for(incident_key, 0, domain)  # refuses a domain no Message-ID may carry
    key = sql_case((round_ <= 1, bindparam(None, incident_key, type_=Text)),
                   else_=bindparam(None, incident_key + "#", type_=Text) + cast(round_, Text))
    nul = bindparam(None, b"\x00", type_=postgresql.BYTEA)
    digest = func.sha256(func.convert_to(key, "UTF8").op("||")(nul)
                         .op("||")(func.convert_to(cast(account_id, Text), "UTF8")))
    return ("<reinstatement." + func.left(func.encode(digest, "hex"), 32) + "@"
            + bindparam(None, domain.lower(), type_=Text) + ">")


def _restore_on_postgresql(conn: Connection, incident: RegisteredIncident,
                           batch: RestoreBatch, now: datetime, sender_domain: str,
                           result: StepResult, actor: str) -> None:
    """The restore of a batch as two statements.

    The platform writes go through `reinstatement_restore_accounts`: the owner's function
    (sql/functions/reinstatement_restore_accounts.sql) checks the incident, its approved
    plan and every account and ban against the contract before it writes, names the unban
    and its time itself, so the pipeline's role needs no write privilege on the platform's
    tables, and a platform row that changed under the batch rolls it back. From its result a second
    statement records each case's unban and pins, queues each notice and audits each case.

    Two statements, not one: joined to the function's result inside one statement, the
    cases were estimated at five times the batch and read whole into a hash table (260 ms
    a batch at 1M accounts); from arrays the planner sees the batch's size and looks each
    case up by its key.
    """
    restored = func.reinstatement_restore_accounts(
        _array(BigInteger, batch.case_ids),
        _array(BigInteger, batch.account_ids),
        _array(BigInteger, batch.ban_ids),
        _array(BigInteger, batch.ban_accounts),
    ).table_valued("restored_account_id", "unban_action_id", "pins_restored",
                   with_ordinality="n").render_derived("restored")
    r = restored.c
    # Its rows come back as arrays in text form, passed on as they are to the next statement.
    restore = select(listed_text(r.restored_account_id, r.n).label("account_ids"),
                     listed_text(r.unban_action_id, r.n).label("unban_action_ids"),
                     listed_text(r.pins_restored, r.n).label("pins_restored"),
                     func.coalesce(func.sum(r.pins_restored), 0).label("pins"),
                     func.count().label("accounts")).select_from(restored)
    try:
        row = conn.execute(restore).one()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "RS001":
            raise RestoreConflict(str(exc.orig).splitlines()[0]) from exc
        raise
    if row.accounts != batch.size or row.account_ids != batch.account_ids:
        raise RestoreConflict("the restore function did not restore the batch it was given")

    done = _array_rows(case_id=(BigInteger, batch.case_ids),
                       account_id=(BigInteger, batch.account_ids),
                       round=(Integer, batch.rounds),
                       prior_state=(Text, batch.prior_states),
                       unban_action_id=(BigInteger, ArrayText(row.unban_action_ids)),
                       pins_restored=(Integer, ArrayText(row.pins_restored)))
    d = done.c
    at = bindparam(None, now, type_=DateTime(timezone=True))
    cases_written = (
        update(Case).where(Case.id == d.case_id, within_cases(batch.first_case, batch.last_case))
        .values(unban_action_id=d.unban_action_id, pins_restored=d.pins_restored,
                state=CaseState.RESTORED, updated_at=at)
        .returning(Case.id, Case.reasons["summary"].as_string().label("summary"))
        .cte("cases_written")
    )
    state: Any
    next_attempt: Any
    if incident.notify:
        state = sql_case((accounts.c.email.is_not(None), NoticeState.PENDING),
                         else_=NoticeState.NO_ADDRESS)
        next_attempt = sql_case((accounts.c.email.is_not(None), at), else_=null())
    else:
        state, next_attempt = bindparam(None, NoticeState.SUPPRESSED, type_=Text), null()
    notices_queued = insert(Notice).from_select(
        ["case_id", "incident_id", "account_id", "message_id", "recipient", "locale", "state",
         "attempts", "next_attempt_at", "created_at", "updated_at"],
        select(d.case_id, bindparam(None, incident.id, type_=BigInteger), d.account_id,
               _message_id_sql(incident.key, d.round, d.account_id, sender_domain),
               accounts.c.email, accounts.c.locale, state,
               bindparam(None, 0, type_=Integer), next_attempt, at, at)
        .join_from(done, accounts, and_(
            accounts.c.id == d.account_id,
            # True of every account of the batch: the account index is then read from
            # the batch's first account, not from the table's first (a merge join).
            accounts.c.id.between(bindparam(None, batch.first_account, type_=BigInteger),
                                  bindparam(None, batch.last_account, type_=BigInteger))))
    ).returning(Notice.state).cte("notices_queued")
    restored_words = ("unban action " + cast(d.unban_action_id, Text) + ", "
                      + cast(d.pins_restored, Text) + " pins restored")
    if batch.one_audit_row:
        # The verdict's summary, which the case row holds since the verification above.
        w = cases_written.c
        reason = ("reinstated: " + w.summary + "; " + restored_words)
        audit_source = select(bindparam(None, incident.id, type_=BigInteger), d.case_id,
                              d.prior_state, bindparam(None, CaseState.RESTORED, type_=Text),
                              bindparam(None, actor, type_=Text), reason, at
                              ).join_from(done, cases_written, w.id == d.case_id)
    else:
        audit_source = select(bindparam(None, incident.id, type_=BigInteger), d.case_id,
                              d.prior_state, bindparam(None, CaseState.RESTORED, type_=Text),
                              bindparam(None, actor, type_=Text),
                              "reinstated: " + restored_words, at).select_from(done)
    audited = insert(AuditEntry).from_select(
        ["incident_id", "case_id", "from_state", "to_state", "actor", "reason", "at"],
        audit_source).cte("audited")
    q = notices_queued.c
    written, queued = conn.execute(select(
        select(func.count()).select_from(cases_written).scalar_subquery(),
        select(func.count()).select_from(notices_queued)
        .where(q.state == NoticeState.PENDING).scalar_subquery(),
    ).add_cte(audited)).one()
    if written != batch.size:
        raise RestoreConflict(f"{batch.size - written} case(s) of the batch were not found")
    result.outcomes[str(Outcome.REINSTATED)] += batch.size
    result.pins_restored += row.pins
    result.notices_queued += queued


def notice_key(incident_key: str, round_: int) -> str:
    """What a notice's Message-ID is derived from: the incident, and the round after the first."""
    return incident_key if round_ <= 1 else f"{incident_key}#{round_}"


def _restore_pins(conn: Connection, ban_ids: Sequence[int], now: datetime) -> Counter[int]:
    """Make visible exactly the hidden pins that these bans hid on their own accounts."""
    owner = (
        select(enforcement_actions.c.account_id)
        .where(enforcement_actions.c.id == pins.c.hidden_by_action_id)
        .scalar_subquery()
    )
    restored: Counter[int] = Counter()
    for chunk in chunks(sorted(ban_ids)):
        rows = conn.execute(
            update(pins)
            .where(pins.c.status == "hidden", id_in(conn, pins.c.hidden_by_action_id, chunk),
                   pins.c.account_id == owner)
            .values(status="visible", hidden_by_action_id=None, updated_at=now)
            .returning(pins.c.account_id)
        ).scalars()
        restored.update(rows)
    return restored
