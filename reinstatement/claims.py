"""Claims: which cases a batch takes, and how many wait for each step.

The pipeline's steps on one batch of cases, each leaving its result in the pipeline's
tables so the next step (or a rerun after a crash) reads exactly where this one stopped:

    planned ──verify──▶ verified ──restore──▶ restored        (outcome reinstated)
       │                   └──────────────▶ closed | review  (other outcomes)
       ├──settle─────────────────────────▶ restored | closed | review
       │    (verify and restore in one transaction, when the incident may restore now)
       └──verify (dry run)──▶ previewed   (a real run verifies again)

Work is claimed with SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL, so two runs of one
incident, or several workers, never take the same case; on SQLite every transaction
holds the database's write lock from its start (see store/engine.py), which serialises claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    func,
    or_,
    select,
)

from reinstatement.models import Case, PlanCase
from reinstatement.states import CaseState
from reinstatement.store import store_for
from reinstatement.verdicts import (
    Outcome,
)


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

    The state is asked for as a range of one value, ordered by state then id, which only
    that index hands over in order. Asked for as `state = :state` ordered by id, PostgreSQL
    could as well read the primary key in id order and filter, and chose it whenever its
    statistics said most cases wait, as they do after planning: batches settle the cases in
    id order, so each claim then passed every case settled before it (at 1M accounts 0.5
    to 1.2 s a claim, 64 s of a 118 s run; tests/test_planner_statistics.py).
    """
    claimed: list[ClaimedCase] = []
    for state in dict.fromkeys(states):
        if len(claimed) >= limit:
            break
        query = (
            select(Case.id, Case.account_id, Case.state, Case.outcome, Case.standing_ban_ids,
                   Case.round, Case.review_decision)
            .where(Case.incident_id == incident_id, Case.state >= state, Case.state <= state)
            .order_by(Case.state, Case.id)
            .limit(limit - len(claimed))
        )
        if outcome is not None:
            query = query.where(Case.outcome == outcome)
        if case_ids is not None:
            query = query.where(Case.id.in_(case_ids))
        if plan_id is not None:
            query = _held_by_plan(query, plan_id).add_columns(PlanCase.verdict,
                                                              PlanCase.ban_ids)
        query = store_for(conn).locked(query, of=Case, skip_locked=True)
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
    counts["restore"] = int(conn.execute(_restorable(incident_id, restore_plan)).scalar_one())
    return {step: n for step, n in counts.items() if n}


def _restorable(incident_id: int, restore_plan: int | None) -> Any:
    restorable = select(func.count()).select_from(Case).where(
        Case.incident_id == incident_id, Case.state == CaseState.VERIFIED,
        Case.outcome == str(Outcome.REINSTATED))
    if restore_plan is not None:
        restorable = _held_by_plan(restorable, restore_plan)
    return restorable


def waiting_count(conn: Connection, incident_id: int, step: str,
                  restore_plan: int | None = None) -> int:
    """How many cases still wait for one step (`pending_work`'s figure for `step`: preview,
    verify or restore), in one statement. A case leaves it when its batch commits."""
    if step == "restore":
        return int(conn.execute(_restorable(incident_id, restore_plan)).scalar_one())
    states = [CaseState.PLANNED] if step == "preview" else [CaseState.PLANNED,
                                                             CaseState.PREVIEWED]
    return int(conn.execute(
        select(func.count()).select_from(Case)
        .where(Case.incident_id == incident_id, Case.state.in_(states))).scalar_one())
