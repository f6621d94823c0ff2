"""The nightly reconciliation's five duties, each on SQLite and PostgreSQL, through Prefect."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from flows.reconcile import InvariantsBroken, nightly_reconciliation
from reinstatement.models import Case, Incident, Notice
from reinstatement.platform_schema import accounts, enforcement_actions, pins
from reinstatement.states import CaseState, NoticeState
from reinstatement.store.engine import utcnow
from tests.factories import SPAM_CORRECTED, SPAM_FAULTY, T0, WRONGFUL, Platform, snapshot
from tests.test_steps import KEY, build_scenario, request, run_all

pytestmark = pytest.mark.prefect


def reinstated_accounts(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Case.account_id).where(
            Case.state == CaseState.RESTORED)).scalars())


def test_dry_run_reports_and_changes_nothing(prefect_api: str, engine: Engine,
                                             cli_env: dict[str, str]) -> None:
    build_scenario(engine)
    run_all(engine, request(), restore=False)  # left mid-way
    before = snapshot(engine)
    with engine.connect() as conn:
        cases_before = conn.execute(select(Case.id, Case.state)).all()
    findings = nightly_reconciliation(dry_run=True)
    assert findings["resumed"] == [KEY]
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(Case.id, Case.state)).all() == cases_before


def test_uncovered_faulty_bans_are_reported_and_reinstated_on_request(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("farm", 1, "faulty", SPAM_FAULTY)
        p.rule("farm", 2, "active", SPAM_CORRECTED)
        wrongly = [p.account() for _ in range(3)]
        for account in wrongly:
            p.pin(account, "hidden", p.ban(account, faulty, WRONGFUL))
    findings = nightly_reconciliation()
    assert [(v["version"], v["standing_bans"]) for v in findings["uncovered"]] == [
        ("farm@1", 3)]
    assert reinstated_accounts(engine) == set()  # reported only

    findings = nightly_reconciliation(auto_reinstate=True)
    assert len(findings["auto_incidents"]) == 1
    assert reinstated_accounts(engine) == set(wrongly)
    assert nightly_reconciliation()["uncovered"] == []  # covered now


def test_incidents_left_mid_way_are_resumed_but_not_those_awaiting_approval(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request(), restore=False)
    with engine.begin() as conn:
        p = Platform(conn)
        other = p.account()
        p.ban(other, 2, WRONGFUL)  # spam@7, the scenario's faulty version
    run_all(engine, request(incident_key="INC-WAITING", require_approval=True),
            restore=False)
    findings = nightly_reconciliation()
    assert findings["resumed"] == [KEY]
    assert findings["awaiting_operator"] == ["INC-WAITING"]
    # The resumed incident also plans candidates banned since it last planned (`other`).
    expected = {a for a, o in scenario.expected.items() if o == "reinstated"} | {other}
    assert reinstated_accounts(engine) == expected
    with engine.connect() as conn:
        waiting = conn.execute(select(func.count()).select_from(Case).join(
            Incident, Incident.id == Case.incident_id).where(
            Incident.key == "INC-WAITING", Case.state == CaseState.RESTORED)).scalar_one()
    assert waiting == 0


def test_due_and_stuck_notices_are_sent(prefect_api: str, engine: Engine,
                                        cli_env: dict[str, str]) -> None:
    build_scenario(engine)
    run_all(engine, request())
    past = utcnow() - timedelta(minutes=5)
    with engine.begin() as conn:
        ids = list(conn.execute(select(Notice.id).where(
            Notice.state == NoticeState.PENDING).order_by(Notice.id)).scalars())
        conn.execute(update(Notice).where(Notice.id == ids[0]).values(
            state=NoticeState.RETRY, attempts=2, next_attempt_at=past))
        conn.execute(update(Notice).where(Notice.id == ids[1]).values(
            state=NoticeState.SENDING, attempts=1, next_attempt_at=past))
    findings = nightly_reconciliation()
    assert findings["notices"]["sent"] == 2
    with engine.connect() as conn:
        states = set(conn.execute(select(Notice.state).where(Notice.id.in_(ids))).scalars())
    assert states == {NoticeState.SENT}
    assert len(list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))) == 2


def test_accounts_banned_again_by_a_faulty_version_are_reinstated_again(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    account = min(a for a, o in scenario.expected.items() if o == "reinstated")
    with engine.begin() as conn:
        p = Platform(conn)
        again = p.ban(account, 2, WRONGFUL, created_at=utcnow() + timedelta(seconds=1))
        pin = p.pin(account, "hidden", again)
        conn.execute(update(accounts).where(accounts.c.id == account)
                     .values(status="banned"))
    findings = nightly_reconciliation()
    assert [r["account"] for r in findings["rebanned"]] == [account]
    with engine.connect() as conn:
        rounds = conn.execute(select(Case.round, Case.state, Case.outcome).where(
            Case.account_id == account).order_by(Case.round)).all()
        status = conn.execute(select(accounts.c.status).where(accounts.c.id == account)
                              ).scalar_one()
        ban = conn.execute(select(enforcement_actions.c.reversed_at).where(
            enforcement_actions.c.id == again)).scalar_one()
        pin_status = conn.execute(select(pins.c.status).where(pins.c.id == pin)).scalar_one()
        message_ids = conn.execute(select(Notice.message_id).join(
            Case, Case.id == Notice.case_id).where(Case.account_id == account)).scalars().all()
    assert [(r.round, r.state, r.outcome) for r in rounds] == [
        (1, "restored", "reinstated"), (2, "restored", "reinstated")]
    assert (status, ban is not None, pin_status) == ("active", True, "visible")
    assert len(set(message_ids)) == 2  # a second notice, with its own Message-ID
    assert nightly_reconciliation()["rebanned"] == []


def test_pins_left_hidden_by_a_reversed_ban_are_repaired(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    pin = min(scenario.restored_pins)
    with engine.begin() as conn:
        account = conn.execute(select(pins.c.account_id).where(pins.c.id == pin)).scalar_one()
        ban = scenario.reinstated_bans[account][0]
        conn.execute(update(pins).where(pins.c.id == pin).values(
            status="hidden", hidden_by_action_id=ban))
    findings = nightly_reconciliation()
    assert findings["invariants"]["pins_repaired"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(pins.c.status).where(pins.c.id == pin)).scalar_one() == \
            "visible"


@pytest.mark.parametrize("break_it", ["banned_without_cause", "notice_without_case"])
def test_broken_invariants_fail_the_run(prefect_api: str, engine: Engine,
                                        cli_env: dict[str, str], break_it: str) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    with engine.begin() as conn:
        if break_it == "banned_without_cause":
            account = min(a for a, o in scenario.expected.items() if o == "reinstated")
            conn.execute(update(accounts).where(accounts.c.id == account)
                         .values(status="banned"))
        else:
            notice = conn.execute(select(Notice.id, Notice.case_id)).first()
            assert notice is not None
            conn.execute(update(Notice).where(Notice.id == notice.id)
                         .values(state=NoticeState.SENT))
            conn.execute(update(Case).where(Case.id == notice.case_id)
                         .values(state=CaseState.REVIEW, outcome="needs_review"))
    with pytest.raises(InvariantsBroken, match="need a person"):
        nightly_reconciliation()


def test_window_start_is_kept_for_later_rounds() -> None:
    from reinstatement.facts import rules_for_round
    from reinstatement.verdicts import IncidentRules

    class _Incident:
        rules = IncidentRules(faulty={}, since=T0, until=T0 + timedelta(days=1))

    assert rules_for_round(_Incident(), 1).until is not None  # type: ignore[arg-type]
    later = rules_for_round(_Incident(), 2)  # type: ignore[arg-type]
    assert (later.since, later.until) == (T0, None)


@pytest.mark.prefect
def test_only_a_real_incident_whose_window_holds_a_ban_covers_it(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    """After the seeded incident (window 1 to 15 April) completes, the standing bans of its
    own faulty versions dated outside its window are still reported, per version and per
    day; a dry run that merely names link_farm@1 covers none of its bans."""
    from reinstatement import runner
    from reinstatement.platform_schema import enforcement_actions, rule_versions
    from reinstatement.seed import INCIDENT_SINCE, INCIDENT_UNTIL, SeedOptions, seed
    from tests.factories import seeded_incident_request

    seed(engine, SeedOptions(accounts=600, seed=11))
    ea, rv = enforcement_actions, rule_versions

    def standing(version: str, outside_window: bool) -> dict[str, int]:
        name, number = version.split("@")
        query = (select(ea.c.created_at).join(rv, rv.c.id == ea.c.rule_version_id)
                 .where(rv.c.rule_name == name, rv.c.version == int(number),
                        ea.c.kind == "ban", ea.c.reversed_at.is_(None)))
        if outside_window:
            query = query.where((ea.c.created_at < INCIDENT_SINCE)
                                | (ea.c.created_at >= INCIDENT_UNTIL))
        with engine.connect() as conn:
            days: dict[str, int] = {}
            for (at,) in conn.execute(query):
                days[at.date().isoformat()] = days.get(at.date().isoformat(), 0) + 1
        return days

    def reported() -> dict[str, dict[str, int]]:
        return {v["version"]: {d["day"]: d["bans"] for d in v["by_day"]}
                for v in nightly_reconciliation(dry_run=True)["uncovered"]}

    link_farm = standing("link_farm@1", outside_window=False)
    assert link_farm and reported()["link_farm@1"] == link_farm
    runner.run_without_prefect(engine, seeded_incident_request(
        incident_key="INC-DRY", faulty_versions=["link_farm@1"], since=None, until=None,
        dry_run=True))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Case)).scalar_one() == sum(
            link_farm.values())  # the dry run has a case for each of those accounts
    assert reported()["link_farm@1"] == link_farm  # yet it covers nothing

    outside = standing("spam_burst@7", outside_window=True)
    assert outside, "the seed bans outside the window too"
    run = runner.run_without_prefect(engine, seeded_incident_request(notify=False))
    assert runner.complete_if_done(engine, runner.register(
        engine, seeded_incident_request(notify=False), "test"), "test") or run
    after = reported()
    assert after["spam_burst@7"] == outside
    assert after["link_farm@1"] == link_farm
