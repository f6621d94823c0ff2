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

This module is the plan's rules and values, plain Python; `reinstatement.plan_records`
writes plans and reads them back from the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

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


@dataclass(frozen=True)
class PlanMade:
    """The outcome of `plan_records.make_plan`: the newest plan, and whether this call
    wrote it."""

    plan: PlanRef
    new: bool
    previous: PlanRef | None


def describe_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{verdict} {n:,}" for verdict, n in counts.items())
    return f"{total:,} case(s)" + (f": {parts}" if parts else "")
