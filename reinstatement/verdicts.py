"""What each candidate account of an incident comes out as, by the contract's rules.

PLATFORM.md, "An incident, and what each account must come out as": a ban from a named faulty
rule version inside the incident's window is a faulty ban, judged wrongful, confirmed or
uncertain by the corrected version's condition; the account's outcome is the first of skipped,
upheld, kept_other_ban, needs_review and reinstated that applies. This module decides that from
plain facts already read from the database, and records why in a JSON-serialisable form that is
stored with the decision and shown to reviewers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from reinstatement.conditions import Condition, UnknownSignal, explain


class BanVerdict(StrEnum):
    """How a faulty ban fares against the corrected version's condition."""

    WRONGFUL = "wrongful"  # the corrected condition is false on the evidence
    CONFIRMED = "confirmed"  # ... true on the evidence
    UNCERTAIN = "uncertain"  # ... unknown, or there is no corrected version


FAULTY_VERDICTS: frozenset[str] = frozenset(BanVerdict)


class Outcome(StrEnum):
    """An account's outcome; the members are in the contract's order of precedence."""

    SKIPPED = "skipped"
    UPHELD = "upheld"
    KEPT_OTHER_BAN = "kept_other_ban"
    NEEDS_REVIEW = "needs_review"
    REINSTATED = "reinstated"


# Why a standing ban is not a faulty ban (classify_ban).
MODERATOR_BAN = "moderator"
NOT_A_RULE_BAN = "not a rule ban"
VERSION_NOT_NAMED = "version not named"
OUTSIDE_WINDOW = "outside window"


@dataclass(frozen=True, slots=True)
class FaultyVersion:
    """One faulty rule version named by an incident, with its corrected version if any."""

    faulty_version_id: int
    faulty_name: str  # "spam_burst@7"
    corrected_version_id: int | None
    corrected_name: str | None
    corrected_condition: Condition | None  # None: no corrected version, so bans are uncertain


@dataclass(frozen=True, slots=True)
class IncidentRules:
    """What an incident says about bans: its faulty versions and its window on created_at.

    The window is half-open, ``since <= created_at < until``; either end may be open (None).
    """

    faulty: Mapping[int, FaultyVersion]  # keyed by faulty_version_id
    since: datetime | None
    until: datetime | None


@dataclass(frozen=True, slots=True)
class StandingBan:
    """A platform enforcement action of kind 'ban' whose reversed_at is NULL."""

    action_id: int
    source: str  # 'rule', 'moderator' or 'reinstatement'
    rule_version_id: int | None
    rule_name: str | None  # the version's name, "harassment@4", when known
    created_at: datetime
    evidence: object  # the parsed JSON evidence, or None
    # The corrected condition's truth on the evidence, when the database already judged it
    # true or false (steps.load_standing_bans); None: judge it here, from `evidence`.
    corrected_truth: bool | None = None


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """The account as the platform has it; status None means there is no such account."""

    account_id: int
    status: str | None


@dataclass(frozen=True, slots=True)
class CaseDecision:
    """An account's outcome, the bans it rests on, and why (JSON-serialisable)."""

    outcome: Outcome
    faulty_ban_ids: tuple[int, ...]  # sorted ids of the standing faulty bans
    standing_ban_ids: tuple[int, ...]  # sorted ids of all standing bans
    reasons: dict[str, object]


def classify_ban(ban: StandingBan, rules: IncidentRules) -> str | None:
    """Why the ban is not a faulty ban of the incident, or None when it is one."""
    if ban.source == "moderator":
        return MODERATOR_BAN
    if ban.source != "rule":
        return NOT_A_RULE_BAN
    # A rule ban whose rule_version_id is NULL cannot be from a named version: None is no key.
    if ban.rule_version_id not in rules.faulty:
        return VERSION_NOT_NAMED
    created_at = _as_utc(ban.created_at)
    if rules.since is not None and created_at < _as_utc(rules.since):
        return OUTSIDE_WINDOW
    if rules.until is not None and created_at >= _as_utc(rules.until):
        return OUTSIDE_WINDOW
    return None


def judge_faulty_ban(
    ban: StandingBan, version: FaultyVersion
) -> tuple[BanVerdict, list[UnknownSignal]]:
    """The faulty ban's verdict, with the signals that left it uncertain."""
    if version.corrected_condition is None:
        return BanVerdict.UNCERTAIN, []
    if ban.corrected_truth is not None:
        # Judged in the database: a known truth has no unknown signals to name.
        return (BanVerdict.CONFIRMED if ban.corrected_truth else BanVerdict.WRONGFUL), []
    truth, unknown_signals = explain(version.corrected_condition, ban.evidence)
    if truth is None:
        return BanVerdict.UNCERTAIN, unknown_signals
    return (BanVerdict.CONFIRMED if truth else BanVerdict.WRONGFUL), unknown_signals


@dataclass(frozen=True, slots=True)
class _JudgedFaultyBan:
    ban: StandingBan
    version: FaultyVersion
    verdict: BanVerdict
    unknown_signals: list[UnknownSignal]

    def to_json(self) -> dict[str, object]:
        return {
            "ban_id": self.ban.action_id,
            "faulty_version": self.version.faulty_name,
            "corrected_version": self.version.corrected_name,
            "verdict": str(self.verdict),
            "unknown_signals": [unknown.to_json() for unknown in self.unknown_signals],
            "created_at": _as_utc(self.ban.created_at).isoformat(),
        }

    def describe(self) -> str:
        ban = f"ban {self.ban.action_id} by {self.version.faulty_name}"
        if self.verdict is BanVerdict.CONFIRMED:
            return f"{self.version.corrected_name} confirms {ban}"
        if self.verdict is BanVerdict.WRONGFUL:
            return f"{ban} is wrongful by {self.version.corrected_name}"
        if self.version.corrected_condition is None:
            return f"{ban} has no corrected version"
        signals = ", ".join(f"{u.signal} {u.problem}" for u in self.unknown_signals)
        return f"{self.version.corrected_name} is unknown on {ban} ({signals})"


@dataclass(frozen=True, slots=True)
class _OtherBan:
    ban: StandingBan
    why_not_faulty: str

    def to_json(self) -> dict[str, object]:
        return {
            "ban_id": self.ban.action_id,
            "source": self.ban.source,
            "rule_version": self.ban.rule_name,
            "why_not_faulty": self.why_not_faulty,
        }

    def describe(self) -> str:
        origin = f"from {self.ban.rule_name}, " if self.ban.rule_name is not None else ""
        return f"ban {self.ban.action_id} ({origin}{self.why_not_faulty})"


def decide(
    account: AccountFacts, standing_bans: Sequence[StandingBan], rules: IncidentRules
) -> CaseDecision:
    """The account's outcome: the first of the contract's five that applies."""
    faulty_bans: list[_JudgedFaultyBan] = []
    other_bans: list[_OtherBan] = []
    # Every ban is judged even when the account is skipped, so the record says what was seen.
    for ban in sorted(standing_bans, key=lambda ban: ban.action_id):
        why_not_faulty = classify_ban(ban, rules)
        if why_not_faulty is not None:
            other_bans.append(_OtherBan(ban, why_not_faulty))
            continue
        version = rules.faulty[cast(int, ban.rule_version_id)]  # classify_ban found it named
        verdict, unknown_signals = judge_faulty_ban(ban, version)
        faulty_bans.append(_JudgedFaultyBan(ban, version, verdict, unknown_signals))
    confirmed = [judged for judged in faulty_bans if judged.verdict is BanVerdict.CONFIRMED]
    uncertain = [judged for judged in faulty_bans if judged.verdict is BanVerdict.UNCERTAIN]

    skip_reason = _skip_reason(account, has_faulty_ban=bool(faulty_bans))
    if skip_reason is not None:
        outcome, summary = Outcome.SKIPPED, f"skipped: {skip_reason}"
    elif confirmed:
        outcome = Outcome.UPHELD
        summary = f"upheld: {_join(judged.describe() for judged in confirmed)}"
    elif other_bans:
        outcome = Outcome.KEPT_OTHER_BAN
        summary = f"kept banned by {_join(other.describe() for other in other_bans)}"
    elif uncertain:
        outcome = Outcome.NEEDS_REVIEW
        summary = f"needs review: {_join(judged.describe() for judged in uncertain)}"
    else:
        outcome = Outcome.REINSTATED
        versions = sorted({judged.version.faulty_name for judged in faulty_bans})
        summary = f"every standing ban is a wrongful ban by {_join(versions)}"

    reasons: dict[str, object] = {
        "outcome": str(outcome),
        "summary": summary,
        "faulty_bans": [judged.to_json() for judged in faulty_bans],
        "other_bans": [other.to_json() for other in other_bans],
    }
    if skip_reason is not None:
        reasons["skip_reason"] = skip_reason
    return CaseDecision(
        outcome=outcome,
        faulty_ban_ids=tuple(judged.ban.action_id for judged in faulty_bans),
        standing_ban_ids=tuple(sorted(ban.action_id for ban in standing_bans)),
        reasons=reasons,
    )


def _skip_reason(account: AccountFacts, *, has_faulty_ban: bool) -> str | None:
    if account.status is None:
        return "account does not exist"
    if account.status != "banned":
        return f"status is '{account.status}'"
    if not has_faulty_ban:
        return "no standing faulty ban"
    return None


def _join(phrases: Iterable[str]) -> str:
    """Join phrases as "a", "a and b" or "a, b and c"."""
    items = list(phrases)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _as_utc(moment: datetime) -> datetime:
    # The contract's timestamps are UTC; SQLite hands them back naive, so read naive as UTC
    # rather than fail comparing naive with aware.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
