"""Facts for verification: the accounts and their standing bans, read under lock, and
the reference decision (verdicts.decide) on them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Connection,
    any_,
    func,
    select,
)

from reinstatement.claims import ClaimedCase
from reinstatement.conditions import decode_evidence
from reinstatement.incidents import RegisteredIncident
from reinstatement.platform_schema import accounts, enforcement_actions
from reinstatement.store import store_for, verdict_sql
from reinstatement.store.bulk import StatementCache, chunks, id_in
from reinstatement.store.verdict_sql import array as _array
from reinstatement.store.verdict_sql import (
    array_literal,
    judged_bans,
    standing_bans_query,
)
from reinstatement.verdicts import (
    AccountFacts,
    CaseDecision,
    IncidentRules,
    StandingBan,
    decide,
)


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
        if lock and store_for(conn).row_locks:
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
    set_based = store_for(conn).set_based_batches
    for chunk in chunks(sorted(account_ids)):
        if set_based:  # one statement for every batch, the accounts as a parameter
            judged = _STANDING_BANS.get((store_for(conn).name, repr(rules)), lambda: judged_bans(
                "postgresql", standing_bans_query(
                    enforcement_actions.c.account_id == any_(verdict_sql.array_param(
                        "ban_accounts", BigInteger))), rules))
            rows = conn.execute(judged, {"ban_accounts": array_literal(BigInteger, chunk)})
        else:
            rows = conn.execute(judged_bans(store_for(conn).name, standing_bans_query(
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


_STANDING_BANS = StatementCache()


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


