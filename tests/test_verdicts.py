"""Each account's outcome, clause by clause as PLATFORM.md orders them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from reinstatement.conditions import UnknownSignal, parse_condition
from reinstatement.verdicts import (
    FAULTY_VERDICTS,
    AccountFacts,
    BanVerdict,
    CaseDecision,
    FaultyVersion,
    IncidentRules,
    Outcome,
    StandingBan,
    classify_ban,
    decide,
    judge_faulty_ban,
)

SINCE = datetime(2025, 4, 1, tzinfo=UTC)
UNTIL = datetime(2025, 4, 8, tzinfo=UTC)
INSIDE = datetime(2025, 4, 3, 12, 30, tzinfo=UTC)

# spam_burst@8 bans at 10 links a minute or more; @7 banned far below that.
SPAM_BURST_7 = FaultyVersion(
    faulty_version_id=7,
    faulty_name="spam_burst@7",
    corrected_version_id=8,
    corrected_name="spam_burst@8",
    corrected_condition=parse_condition({"signal": "links_per_minute", "op": ">=", "value": 10}),
)
LINK_FLOOD_2 = FaultyVersion(
    faulty_version_id=21,
    faulty_name="link_flood@2",
    corrected_version_id=22,
    corrected_name="link_flood@3",
    corrected_condition=parse_condition(
        {"all": [{"signal": "domain", "op": "in", "value": ["bad.example"]}]}
    ),
)
CAPS_LOCK_1 = FaultyVersion(  # a rule withdrawn without a corrected version
    faulty_version_id=31,
    faulty_name="caps_lock@1",
    corrected_version_id=None,
    corrected_name=None,
    corrected_condition=None,
)
RULES = IncidentRules(
    faulty={version.faulty_version_id: version for version in (SPAM_BURST_7, LINK_FLOOD_2,
                                                                 CAPS_LOCK_1)},
    since=SINCE,
    until=UNTIL,
)  # fmt: skip

BANNED = AccountFacts(account_id=1, status="banned")

WRONGFUL_EVIDENCE = {"links_per_minute": 3}
CONFIRMED_EVIDENCE = {"links_per_minute": 12}
UNCERTAIN_EVIDENCE = {"links_per_minute": None}


def rule_ban(
    action_id: int,
    rule_version_id: int | None = 7,
    evidence: object = WRONGFUL_EVIDENCE,
    created_at: datetime = INSIDE,
    rule_name: str | None = None,
) -> StandingBan:
    if rule_name is None and rule_version_id is not None and rule_version_id in RULES.faulty:
        rule_name = RULES.faulty[rule_version_id].faulty_name
    return StandingBan(action_id, "rule", rule_version_id, rule_name, created_at, evidence)


def wrongful(action_id: int) -> StandingBan:
    return rule_ban(action_id, evidence=WRONGFUL_EVIDENCE)


def confirmed(action_id: int) -> StandingBan:
    return rule_ban(action_id, evidence=CONFIRMED_EVIDENCE)


def uncertain(action_id: int) -> StandingBan:
    return rule_ban(action_id, evidence=UNCERTAIN_EVIDENCE)


def moderator_ban(action_id: int) -> StandingBan:
    return StandingBan(action_id, "moderator", None, None, INSIDE, None)


# --- which bans are faulty -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ban", "why_not_faulty"),
    [
        pytest.param(rule_ban(1), None, id="named-version-inside-window"),
        pytest.param(rule_ban(1, created_at=SINCE), None, id="exactly-at-since-is-inside"),
        pytest.param(rule_ban(1, created_at=UNTIL - timedelta(microseconds=1)), None,
                     id="just-before-until-is-inside"),
        pytest.param(rule_ban(1, created_at=UNTIL), "outside window",
                     id="exactly-at-until-is-outside"),
        pytest.param(rule_ban(1, created_at=SINCE - timedelta(microseconds=1)), "outside window",
                     id="just-before-since-is-outside"),
        pytest.param(rule_ban(1, rule_version_id=99, rule_name="harassment@4"),
                     "version not named", id="version-not-named"),
        pytest.param(rule_ban(1, rule_version_id=None), "version not named",
                     id="rule-ban-without-version"),
        pytest.param(moderator_ban(1), "moderator", id="moderator"),
        pytest.param(StandingBan(1, "moderator", 7, "spam_burst@7", INSIDE, WRONGFUL_EVIDENCE),
                     "moderator", id="moderator-with-a-named-version-id"),
        pytest.param(StandingBan(1, "reinstatement", 7, None, INSIDE, None), "not a rule ban",
                     id="other-source"),
        pytest.param(rule_ban(1, created_at=datetime(2025, 4, 3)), None,
                     id="naive-timestamp-read-as-utc"),
    ],
)  # fmt: skip
def test_a_faulty_ban_is_from_a_named_version_inside_the_window(
    ban: StandingBan, why_not_faulty: str | None
) -> None:
    assert classify_ban(ban, RULES) == why_not_faulty


@pytest.mark.parametrize(
    ("since", "until", "created_at", "why_not_faulty"),
    [
        pytest.param(None, None, datetime(2000, 1, 1, tzinfo=UTC), None, id="no-window"),
        pytest.param(SINCE, None, datetime(2099, 1, 1, tzinfo=UTC), None, id="open-end"),
        pytest.param(None, UNTIL, datetime(2000, 1, 1, tzinfo=UTC), None, id="open-start"),
        pytest.param(None, UNTIL, UNTIL, "outside window", id="open-start-until-excluded"),
    ],
)
def test_either_end_of_the_window_may_be_open(
    since: datetime | None, until: datetime | None, created_at: datetime, why_not_faulty: str | None
) -> None:
    rules = IncidentRules(faulty=RULES.faulty, since=since, until=until)
    assert classify_ban(rule_ban(1, created_at=created_at), rules) == why_not_faulty


# --- each faulty ban's verdict -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "evidence", "verdict", "unknown_signals"),
    [
        pytest.param(SPAM_BURST_7, {"links_per_minute": 3}, "wrongful", [],
                     id="corrected-false-is-wrongful"),
        pytest.param(SPAM_BURST_7, {"links_per_minute": 10}, "confirmed", [],
                     id="corrected-true-is-confirmed"),
        pytest.param(SPAM_BURST_7, {}, "uncertain", [UnknownSignal("links_per_minute", "absent")],
                     id="absent-signal-is-uncertain"),
        pytest.param(SPAM_BURST_7, {"links_per_minute": "many"}, "uncertain",
                     [UnknownSignal("links_per_minute", "type_mismatch")],
                     id="mistyped-signal-is-uncertain"),
        pytest.param(SPAM_BURST_7, None, "uncertain",
                     [UnknownSignal("links_per_minute", "no_evidence")],
                     id="null-evidence-is-uncertain"),
        pytest.param(CAPS_LOCK_1, {"caps_ratio": 0.9}, "uncertain", [],
                     id="no-corrected-version-is-uncertain"),
    ],
)  # fmt: skip
def test_a_faulty_ban_is_judged_by_the_corrected_version(
    version: FaultyVersion,
    evidence: object,
    verdict: str,
    unknown_signals: list[UnknownSignal],
) -> None:
    ban = rule_ban(1, rule_version_id=version.faulty_version_id, evidence=evidence)
    assert judge_faulty_ban(ban, version) == (verdict, unknown_signals)
    assert verdict in FAULTY_VERDICTS


# --- the outcome: the first that applies ---------------------------------------------------

OUTCOME_CASES = [
    # 1 skipped
    pytest.param(AccountFacts(1, None), [wrongful(10)], "skipped", id="account-does-not-exist"),
    pytest.param(AccountFacts(1, "deleted"), [wrongful(10)], "skipped", id="status-deleted"),
    pytest.param(AccountFacts(1, "deactivated"), [wrongful(10)], "skipped",
                 id="status-deactivated"),
    pytest.param(AccountFacts(1, "active"), [wrongful(10)], "skipped", id="status-active"),
    pytest.param(AccountFacts(1, "active"), [confirmed(10)], "skipped",
                 id="skipped-before-upheld"),
    pytest.param(BANNED, [], "skipped", id="banned-without-standing-bans"),
    pytest.param(BANNED, [moderator_ban(10)], "skipped", id="banned-by-moderator-only"),
    pytest.param(BANNED, [rule_ban(10, created_at=UNTIL)], "skipped",
                 id="banned-only-outside-window"),
    pytest.param(BANNED, [rule_ban(10, rule_version_id=None)], "skipped",
                 id="banned-only-by-rule-ban-without-version"),
    # 2 upheld
    pytest.param(BANNED, [confirmed(10)], "upheld", id="confirmed"),
    pytest.param(BANNED, [confirmed(10), moderator_ban(11)], "upheld",
                 id="confirmed-and-moderator-is-upheld-not-kept"),
    pytest.param(BANNED, [uncertain(10), confirmed(11)], "upheld",
                 id="confirmed-and-uncertain-is-upheld"),
    pytest.param(BANNED, [wrongful(10), confirmed(11)], "upheld",
                 id="confirmed-and-wrongful-is-upheld"),
    # 3 kept_other_ban
    pytest.param(BANNED, [wrongful(10), moderator_ban(11)], "kept_other_ban",
                 id="wrongful-and-moderator"),
    pytest.param(BANNED, [uncertain(10), moderator_ban(11)], "kept_other_ban",
                 id="uncertain-and-moderator-is-kept-not-review"),
    pytest.param(BANNED, [wrongful(10), rule_ban(11, rule_version_id=99, rule_name="harassment@4")],
                 "kept_other_ban", id="wrongful-and-version-not-named"),
    pytest.param(BANNED, [wrongful(10), rule_ban(11, created_at=SINCE - timedelta(days=1))],
                 "kept_other_ban", id="wrongful-and-named-version-before-window"),
    pytest.param(BANNED, [wrongful(10), rule_ban(11, created_at=UNTIL)], "kept_other_ban",
                 id="wrongful-and-named-version-exactly-at-until"),
    pytest.param(BANNED, [wrongful(10), rule_ban(11, rule_version_id=None)], "kept_other_ban",
                 id="wrongful-and-rule-ban-without-version"),
    pytest.param(BANNED, [wrongful(10), StandingBan(11, "reinstatement", None, None, INSIDE, None)],
                 "kept_other_ban", id="wrongful-and-ban-from-another-source"),
    # 4 needs_review
    pytest.param(BANNED, [uncertain(10)], "needs_review", id="uncertain"),
    pytest.param(BANNED, [uncertain(10), wrongful(11)], "needs_review",
                 id="uncertain-and-wrongful"),
    pytest.param(BANNED, [rule_ban(10, rule_version_id=31, evidence={"caps_ratio": 0.9})],
                 "needs_review", id="no-corrected-version"),
    pytest.param(BANNED, [rule_ban(10, evidence=None)], "needs_review", id="null-evidence"),
    pytest.param(BANNED, [rule_ban(10, evidence=[3])], "needs_review", id="evidence-not-an-object"),
    pytest.param(BANNED, [rule_ban(10, evidence={"links_per_minute": True})], "needs_review",
                 id="boolean-evidence-for-a-number"),
    # 5 reinstated
    pytest.param(BANNED, [wrongful(10)], "reinstated", id="one-wrongful-ban"),
    pytest.param(BANNED, [wrongful(10), wrongful(11)], "reinstated", id="two-wrongful-bans"),
    pytest.param(BANNED, [wrongful(10), rule_ban(11, rule_version_id=21,
                                                  evidence={"domain": "good.example"})],
                 "reinstated", id="two-wrongful-bans-from-two-versions"),
    pytest.param(BANNED, [rule_ban(10, created_at=SINCE)], "reinstated",
                 id="ban-exactly-at-since-is-inside"),
]  # fmt: skip


@pytest.mark.parametrize(("account", "bans", "outcome"), OUTCOME_CASES)
def test_the_first_outcome_that_applies(
    account: AccountFacts, bans: list[StandingBan], outcome: str
) -> None:
    decision = decide(account, bans, RULES)
    assert decision.outcome == outcome
    assert decision.reasons["outcome"] == outcome
    json.dumps(decision.reasons)


@pytest.mark.parametrize(
    ("account", "bans", "skip_reason"),
    [
        pytest.param(AccountFacts(1, None), [], "account does not exist", id="nonexistent"),
        pytest.param(AccountFacts(1, "deleted"), [wrongful(10)], "status is 'deleted'",
                     id="deleted"),
        pytest.param(AccountFacts(1, "deactivated"), [wrongful(10)], "status is 'deactivated'",
                     id="deactivated"),
        pytest.param(AccountFacts(1, "active"), [confirmed(10)], "status is 'active'",
                     id="active"),
        pytest.param(BANNED, [moderator_ban(10)], "no standing faulty ban", id="no-faulty-ban"),
    ],
)  # fmt: skip
def test_a_skipped_account_says_why(
    account: AccountFacts, bans: list[StandingBan], skip_reason: str
) -> None:
    reasons = decide(account, bans, RULES).reasons
    assert reasons["skip_reason"] == skip_reason
    assert reasons["summary"] == f"skipped: {skip_reason}"


def test_a_skipped_account_still_records_its_bans() -> None:
    decision = decide(AccountFacts(1, "active"), [confirmed(12), moderator_ban(11)], RULES)
    assert decision.outcome is Outcome.SKIPPED
    assert decision.faulty_ban_ids == (12,)
    assert decision.standing_ban_ids == (11, 12)
    assert [ban["verdict"] for ban in _list(decision.reasons["faulty_bans"])] == ["confirmed"]
    assert [ban["ban_id"] for ban in _list(decision.reasons["other_bans"])] == [11]


@pytest.mark.parametrize(
    "outcome",
    ["upheld", "kept_other_ban", "needs_review", "reinstated"],
)
def test_only_a_skipped_account_has_a_skip_reason(outcome: str) -> None:
    bans = {
        "upheld": [confirmed(10)],
        "kept_other_ban": [wrongful(10), moderator_ban(11)],
        "needs_review": [uncertain(10)],
        "reinstated": [wrongful(10)],
    }[outcome]
    decision = decide(BANNED, bans, RULES)
    assert decision.outcome == outcome
    assert "skip_reason" not in decision.reasons


# --- the record of why ---------------------------------------------------------------------


def _list(value: object) -> list[dict[str, object]]:
    assert isinstance(value, list)
    return value


def _round_trip(decision: CaseDecision) -> dict[str, object]:
    reasons: dict[str, object] = json.loads(json.dumps(decision.reasons))
    return reasons


def test_reasons_carry_ban_ids_versions_verdicts_and_unknown_signals() -> None:
    bans = [
        moderator_ban(30),
        rule_ban(20, evidence={"links_per_minute": None}, created_at=SINCE),
        rule_ban(10, rule_version_id=99, rule_name="harassment@4"),
        rule_ban(40, rule_version_id=31, evidence={"caps_ratio": 0.9}),
    ]
    decision = decide(BANNED, bans, RULES)
    assert decision.outcome is Outcome.KEPT_OTHER_BAN
    assert decision.faulty_ban_ids == (20, 40)
    assert decision.standing_ban_ids == (10, 20, 30, 40)
    assert _round_trip(decision) == {
        "outcome": "kept_other_ban",
        "summary": "kept banned by ban 10 (from harassment@4, version not named) and "
        "ban 30 (moderator)",
        "faulty_bans": [
            {
                "ban_id": 20,
                "faulty_version": "spam_burst@7",
                "corrected_version": "spam_burst@8",
                "verdict": "uncertain",
                "unknown_signals": [{"signal": "links_per_minute", "problem": "null"}],
                "created_at": "2025-04-01T00:00:00+00:00",
            },
            {
                "ban_id": 40,
                "faulty_version": "caps_lock@1",
                "corrected_version": None,
                "verdict": "uncertain",
                "unknown_signals": [],
                "created_at": "2025-04-03T12:30:00+00:00",
            },
        ],
        "other_bans": [
            {
                "ban_id": 10,
                "source": "rule",
                "rule_version": "harassment@4",
                "why_not_faulty": "version not named",
            },
            {
                "ban_id": 30,
                "source": "moderator",
                "rule_version": None,
                "why_not_faulty": "moderator",
            },
        ],
    }


@pytest.mark.parametrize(
    ("bans", "summary"),
    [
        pytest.param([wrongful(10)], "every standing ban is a wrongful ban by spam_burst@7",
                     id="reinstated"),
        pytest.param([wrongful(10), rule_ban(11, rule_version_id=21, evidence={"domain": "x"})],
                     "every standing ban is a wrongful ban by link_flood@2 and spam_burst@7",
                     id="reinstated-two-versions"),
        pytest.param([confirmed(10), wrongful(11)], "upheld: spam_burst@8 confirms ban 10 by "
                     "spam_burst@7", id="upheld"),
        pytest.param([uncertain(10)], "needs review: spam_burst@8 is unknown on ban 10 by "
                     "spam_burst@7 (links_per_minute null)", id="needs-review-unknown-signal"),
        pytest.param([rule_ban(10, rule_version_id=31)], "needs review: ban 10 by caps_lock@1 has "
                     "no corrected version", id="needs-review-no-corrected-version"),
        pytest.param([wrongful(10), moderator_ban(11)], "kept banned by ban 11 (moderator)",
                     id="kept-other-ban"),
    ],
)  # fmt: skip
def test_the_summary_says_why_in_one_sentence(bans: list[StandingBan], summary: str) -> None:
    assert decide(BANNED, bans, RULES).reasons["summary"] == summary


def test_a_naive_created_at_is_reported_as_utc() -> None:
    ban = rule_ban(10, created_at=datetime(2025, 4, 3, 12, 30))
    faulty_bans = _list(decide(BANNED, [ban], RULES).reasons["faulty_bans"])
    assert faulty_bans[0]["created_at"] == "2025-04-03T12:30:00+00:00"


def test_outcomes_are_the_contracts_five_in_its_order() -> None:
    """The code's outcomes and their order are the ones the contract document numbers."""
    import re

    from tests.conftest import CONTRACT

    text = CONTRACT.read_text(encoding="utf-8")
    numbered = re.findall(r"^\d\. `(\w+)`", text, flags=re.MULTILINE)
    assert [str(outcome) for outcome in Outcome] == numbered
    verdicts = set(re.findall(r"\*\*(wrongful|confirmed|uncertain)\*\*", text))
    assert set(BanVerdict) == FAULTY_VERDICTS == verdicts
