"""The steps on a real database (SQLite and PostgreSQL), driven without Prefect.

One scenario holds every kind of account the contract tells apart; the tests check each
outcome, that the platform rows changed are exactly those the contract names, that a
rerun changes nothing, that a dry run changes nothing on the platform, and that an
account whose bans changed between verification and restore is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update

from reinstatement import restore, runner
from reinstatement.incident_request import IncidentRequest, build_request
from reinstatement.incidents import load_incident
from reinstatement.models import AuditEntry, Case, Notice
from reinstatement.platform_schema import enforcement_actions
from reinstatement.states import PIPELINE_ACTOR, CaseState
from tests.factories import (
    CONFIRMED,
    SPAM_CORRECTED,
    SPAM_FAULTY,
    T0,
    UNCERTAIN,
    WRONGFUL,
    Platform,
    changed_rows,
    snapshot,
)

KEY = "INC-TEST-1"


@dataclass
class Scenario:
    expected: dict[int, str]          # account id -> outcome
    reinstated_bans: dict[int, list[int]]  # account id -> bans the restore must reverse
    restored_pins: set[int]           # pins that must become visible
    untouched_pins: set[int]          # hidden pins that must stay hidden
    listed_only: list[int]            # ids for an operator's list, including a missing one


def build_scenario(engine: Engine) -> Scenario:
    with engine.begin() as conn:
        p = Platform(conn)
        p.rule("spam", 6, "retired", {"signal": "links", "op": ">=", "value": 500})
        faulty = p.rule("spam", 7, "faulty", SPAM_FAULTY)
        p.rule("spam", 8, "active", SPAM_CORRECTED)
        other = p.rule("abuse", 2, "active", {"signal": "reports", "op": ">=", "value": 5})
        unnamed = p.rule("farm", 1, "faulty", {"signal": "domains", "op": "<", "value": 3})
        expected: dict[int, str] = {}
        bans: dict[int, list[int]] = {}
        restored_pins: set[int] = set()
        untouched: set[int] = set()

        # reinstated: one wrongful faulty ban; pins hidden by it come back, others stay
        a = p.account()
        ban = p.ban(a, faulty, WRONGFUL)
        restored_pins |= {p.pin(a, "hidden", ban), p.pin(a, "hidden", ban)}
        untouched |= {p.pin(a, "hidden", None)}  # hidden by its owner
        p.pin(a, "deleted", None)
        p.pin(a, "visible", None)
        expected[a], bans[a] = "reinstated", [ban]

        # reinstated: two wrongful faulty bans, plus an old reversed ban whose pin stays
        b = p.account(locale="pt-BR")
        unban = p.unban(b, T0 - timedelta(days=300))
        old = p.ban(b, None, source="moderator", created_at=T0 - timedelta(days=301),
                    reversed_by=unban, reversed_at=T0 - timedelta(days=300))
        ban1 = p.ban(b, faulty, WRONGFUL)
        ban2 = p.ban(b, faulty, {"links": 60, "verified": True}, created_at=T0 + timedelta(1))
        restored_pins |= {p.pin(b, "hidden", ban1), p.pin(b, "hidden", ban2)}
        untouched |= {p.pin(b, "hidden", old)}
        expected[b], bans[b] = "reinstated", [ban1, ban2]

        # reinstated without an email address: restored, no notice sent
        c = p.account(email=None)
        ban = p.ban(c, faulty, WRONGFUL)
        restored_pins.add(p.pin(c, "hidden", ban))
        expected[c], bans[c] = "reinstated", [ban]

        # upheld: confirmed, even with a moderator ban too
        d = p.account()
        untouched.add(p.pin(d, "hidden", p.ban(d, faulty, CONFIRMED)))
        p.ban(d, None, source="moderator")
        expected[d] = "upheld"

        # kept_other_ban: moderator; other active rule; unnamed faulty; outside window
        for kind in ("moderator", "other", "unnamed", "window"):
            e = p.account()
            untouched.add(p.pin(e, "hidden", p.ban(e, faulty, WRONGFUL)))
            if kind == "moderator":
                p.ban(e, None, source="moderator")
            elif kind == "other":
                p.ban(e, other, {"reports": 9})
            elif kind == "unnamed":
                p.ban(e, unnamed, {"domains": 1})
            else:
                p.ban(e, faulty, WRONGFUL, created_at=T0 + timedelta(days=30))
            expected[e] = "kept_other_ban"

        # needs_review: absent signal, NULL evidence, mistyped value
        for evidence in (UNCERTAIN, None, {"links": "80", "verified": False}):
            f = p.account()
            untouched.add(p.pin(f, "hidden", p.ban(f, faulty, evidence)))
            expected[f] = "needs_review"

        # skipped: deleted / deactivated with a standing faulty ban
        for status in ("deleted", "deactivated"):
            g = p.account(status=status)
            p.ban(g, faulty, WRONGFUL)
            expected[g] = "skipped"

        # not candidates: ban already reversed; only outside the window; bystander
        h = p.account(status="active")
        p.ban(h, faulty, WRONGFUL, reversed_by=p.unban(h), reversed_at=T0 + timedelta(days=1))
        i = p.account()
        p.ban(i, faulty, WRONGFUL, created_at=T0 + timedelta(days=30))
        bystander = p.account(status="active")
        p.pin(bystander, "visible")
    return Scenario(expected, bans, restored_pins, untouched,
                    listed_only=[a, h, d, 999_999])


def request(**overrides: object) -> IncidentRequest:
    fields: dict[str, object] = {
        "incident_key": KEY,
        "faulty_versions": ["spam@7"],
        "since": T0 - timedelta(days=10),
        "until": T0 + timedelta(days=10),
        "batch_size": 3,
        "require_approval": False,
    }
    fields.update(overrides)
    return build_request(**fields)


def run_all(engine: Engine, req: IncidentRequest, *, restore: bool = True) -> None:
    """Plan, verify and restore as the flow does, without Prefect."""
    runner.run_without_prefect(engine, req, PIPELINE_ACTOR, restore=restore)


def step_context(engine: Engine, key: str, batch_size: int) -> runner.StepContext:
    """The steps' context for the incident registered under `key`."""
    with engine.connect() as conn:
        return runner.StepContext(engine, load_incident(conn, key), batch_size)


def outcomes(engine: Engine, key: str = KEY) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Case.account_id, Case.outcome)).all())


def test_every_kind_of_account_comes_out_as_the_contract_says(engine: Engine) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    assert outcomes(engine) == scenario.expected


def test_restore_changes_exactly_the_rows_the_contract_names(engine: Engine) -> None:
    scenario = build_scenario(engine)
    before = snapshot(engine)
    run_all(engine, request())
    after = snapshot(engine)
    changes = changed_rows(before, after)

    reinstated = {a for a, o in scenario.expected.items() if o == "reinstated"}
    assert set(changes["accounts"]) == reinstated
    for account_id in reinstated:
        assert set(changes["accounts"][account_id]) == {"status", "updated_at"}
        assert after["accounts"][account_id]["status"] == "active"
        assert after["accounts"][account_id]["updated_at"] > before["accounts"][account_id][
            "updated_at"]

    new_actions = {i: r for i, r in after["enforcement_actions"].items()
                   if i not in before["enforcement_actions"]}
    unban_by_account = {r["account_id"]: i for i, r in new_actions.items()}
    assert len(new_actions) == len(unban_by_account) == len(reinstated)
    assert set(unban_by_account) == reinstated
    for action in new_actions.values():
        assert (action["kind"], action["source"]) == ("unban", "reinstatement")
        assert KEY in action["reason"]
        assert action["reversed_at"] is None and action["evidence"] is None

    changed_bans = {i for i in changes["enforcement_actions"] if i not in new_actions}
    assert changed_bans == {b for bans in scenario.reinstated_bans.values() for b in bans}
    for account_id, bans in scenario.reinstated_bans.items():
        for ban in bans:
            assert set(changes["enforcement_actions"][ban]) == {"reversed_at",
                                                                "reversed_by_action_id"}
            assert after["enforcement_actions"][ban]["reversed_by_action_id"] == \
                unban_by_account[account_id]

    assert set(changes["pins"]) == scenario.restored_pins
    for pin in scenario.restored_pins:
        assert after["pins"][pin]["status"] == "visible"
        assert after["pins"][pin]["hidden_by_action_id"] is None
    for pin in scenario.untouched_pins:
        assert after["pins"][pin] == before["pins"][pin]
    assert "rule_versions" not in changes


def test_outbox_gets_one_notice_per_reinstated_account(engine: Engine) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    with engine.connect() as conn:
        notices = {n.account_id: n for n in conn.execute(select(Notice))}
    reinstated = {a for a, o in scenario.expected.items() if o == "reinstated"}
    assert set(notices) == reinstated
    states = {a: n.state for a, n in notices.items()}
    assert sorted(states.values()) == ["no_address", "pending", "pending"]
    assert len({n.message_id for n in notices.values()}) == len(notices)


def test_rerun_changes_nothing(engine: Engine) -> None:
    build_scenario(engine)
    run_all(engine, request())
    platform, pipeline = snapshot(engine), _pipeline_state(engine)
    run_all(engine, request())
    assert snapshot(engine) == platform
    assert _pipeline_state(engine) == pipeline


def _pipeline_state(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as conn:
        cases = conn.execute(select(Case.account_id, Case.state, Case.outcome,
                                    Case.unban_action_id).order_by(Case.id)).all()
        notices = conn.execute(select(Notice.account_id, Notice.state, Notice.message_id)
                               .order_by(Notice.id)).all()
        return tuple(cases), tuple(notices)


def test_dry_run_records_previews_and_changes_no_platform_row(engine: Engine) -> None:
    scenario = build_scenario(engine)
    before = snapshot(engine)
    run_all(engine, request(dry_run=True))
    assert snapshot(engine) == before
    with engine.connect() as conn:
        rows = conn.execute(select(Case.account_id, Case.state, Case.outcome)).all()
        assert conn.execute(select(func.count()).select_from(Notice)).scalar_one() == 0
    assert {r.account_id: r.outcome for r in rows} == scenario.expected
    assert {r.state for r in rows} == {CaseState.PREVIEWED}
    # The real run verifies again, against the data as it is now.
    with engine.begin() as conn:
        first_reinstated = min(a for a, o in scenario.expected.items() if o == "reinstated")
        Platform(conn).ban(
            first_reinstated, None, source="moderator")
    run_all(engine, request())
    assert outcomes(engine)[first_reinstated] == "kept_other_ban"


def test_operator_list_judges_exactly_those_ids(engine: Engine) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request(account_ids=scenario.listed_only))
    got = outcomes(engine)
    assert set(got) == set(scenario.listed_only)
    a, h, d, missing = scenario.listed_only
    assert got == {a: "reinstated", h: "skipped", d: "upheld", missing: "skipped"}


def test_bans_changed_after_verification_are_never_overwritten(engine: Engine) -> None:
    scenario = build_scenario(engine)
    req = request()
    run_all(engine, req, restore=False)
    reinstated = sorted(a for a, o in scenario.expected.items() if o == "reinstated")
    moderated, lifted = reinstated[0], reinstated[2]
    with engine.begin() as conn:
        p = Platform(conn)
        p.ban(moderated, None, source="moderator")          # a moderator bans it again
        from sqlalchemy import update

        from reinstatement.platform_schema import accounts
        conn.execute(update(accounts).where(accounts.c.id == lifted)
                     .values(status="active"))              # a moderator lifted it by hand
    before = snapshot(engine)
    ctx = step_context(engine, KEY, 10)
    while runner.restore_one_batch(ctx).cases:
        pass
    after = snapshot(engine)
    assert after["accounts"][moderated] == before["accounts"][moderated]
    assert after["accounts"][lifted] == before["accounts"][lifted]
    got = outcomes(engine)
    assert got[moderated] == "kept_other_ban"
    assert got[lifted] == "skipped"
    assert after["accounts"][reinstated[1]]["status"] == "active"


def test_every_state_change_is_audited(engine: Engine) -> None:
    build_scenario(engine)
    run_all(engine, request())
    with engine.connect() as conn:
        cases = dict(conn.execute(select(Case.id, Case.state)).all())
        trail = conn.execute(select(AuditEntry.case_id, AuditEntry.from_state,
                                    AuditEntry.to_state).where(AuditEntry.case_id.is_not(None))
                             .order_by(AuditEntry.id)).all()
    last_state: dict[int, str | None] = {}
    for case_id, before, after in trail:
        assert last_state.get(case_id) == before, (case_id, before, after)
        last_state[case_id] = after
    assert last_state == cases


def test_audit_trail_is_append_only(engine: Engine) -> None:
    build_scenario(engine)
    run_all(engine, request())
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    for statement in (update(AuditEntry).values(reason="edited"), delete(AuditEntry)):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(statement)


def test_seeded_incident_comes_out_as_the_seed_intends(engine: Engine) -> None:
    from collections import Counter

    from reinstatement.seed import (
        INCIDENT_FAULTY,
        INCIDENT_KEY,
        INCIDENT_SINCE,
        INCIDENT_UNTIL,
        SeedOptions,
        seed,
    )

    summary = seed(engine, SeedOptions(accounts=1500, seed=9))
    run_all(engine, build_request(
        incident_key=INCIDENT_KEY, faulty_versions=list(INCIDENT_FAULTY),
        since=INCIDENT_SINCE, until=INCIDENT_UNTIL, batch_size=200, require_approval=False))
    assert Counter(outcomes(engine).values()) == summary.expected_outcomes

    # Each reinstated account's unban says the faulty versions of its case's bans, and
    # reverses exactly those bans (on PostgreSQL the one pass makes both in SQL).
    ea = enforcement_actions
    with engine.connect() as conn:
        restored = conn.execute(select(Case.reasons, Case.standing_ban_ids, Case.unban_action_id)
                                .where(Case.state == CaseState.RESTORED)).all()
        reasons = dict(conn.execute(
            select(ea.c.id, ea.c.reason).where(ea.c.kind == "unban",
                                               ea.c.source == "reinstatement")).all())
        reversed_by = dict(conn.execute(
            select(ea.c.id, ea.c.reversed_by_action_id)
            .where(ea.c.reversed_by_action_id.is_not(None))).all())
    assert len(restored) == summary.expected_outcomes["reinstated"] == len(reasons)
    names_seen = set()
    for case_reasons, ban_ids, unban_id in restored:
        names = ", ".join(sorted({ban["faulty_version"] for ban in case_reasons["faulty_bans"]}))
        names_seen.add(names)
        assert reasons[unban_id] == (f"Reinstated by incident {INCIDENT_KEY}: the ban by "
                                     f"{names} was a mistake")
        assert {ban: reversed_by.get(ban) for ban in ban_ids} == dict.fromkeys(ban_ids, unban_id)
    assert any(", " in names for names in names_seen)  # a reason naming two versions


def test_a_moderators_ban_during_a_restore_is_never_overwritten(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A moderator bans an account on another connection while its restore is in flight,
    between the restore's reading of the account and its writes. The restore's row locks
    make the moderator wait for it, so the moderator's ban and status win; without the
    locks the restore would set the account active over the moderator's ban."""
    import threading

    from reinstatement import restore
    from reinstatement.platform_schema import accounts

    scenario = build_scenario(engine)
    run_all(engine, request(), restore=False)
    target = min(a for a, o in scenario.expected.items() if o == "reinstated")
    read_done, moderator_done = threading.Event(), threading.Event()
    real_apply = restore._apply_restores

    def apply_after_the_moderator_tried(*args: Any, **kwargs: Any) -> Any:
        read_done.set()
        moderator_done.wait(timeout=1.5)  # the moderator commits now, unless it must wait
        return real_apply(*args, **kwargs)

    def moderator() -> None:
        read_done.wait(timeout=30)
        with engine.begin() as conn:
            Platform(conn).ban(target, None, source="moderator", created_at=T0)
            conn.execute(update(accounts).where(accounts.c.id == target)
                         .values(status="banned"))
        moderator_done.set()

    monkeypatch.setattr(restore, "_apply_restores", apply_after_the_moderator_tried)
    other = threading.Thread(target=moderator)
    other.start()
    with engine.connect() as conn:
        ctx = runner.StepContext(engine, load_incident(conn, KEY), 100)
    runner.restore_one_batch(ctx)
    other.join(timeout=60)
    assert moderator_done.is_set()
    with engine.connect() as conn:
        status = conn.execute(select(accounts.c.status).where(accounts.c.id == target)
                              ).scalar_one()
        moderator_bans = conn.execute(select(func.count()).select_from(enforcement_actions)
                                      .where(enforcement_actions.c.account_id == target,
                                             enforcement_actions.c.source == "moderator",
                                             enforcement_actions.c.reversed_at.is_(None))
                                      ).scalar_one()
    assert (status, moderator_bans) == ("banned", 1)


# -- verify and restore in one pass (settle) -----------------------------------------------

def _cases_and_platform(engine: Engine) -> tuple[object, ...]:
    """What a run leaves: each case (by account) and the platform rows, without the ids
    and times that differ between two runs."""
    with engine.connect() as conn:
        cases = {r.account_id: (r.state, r.outcome, r.reasons, r.faulty_ban_ids,
                                r.standing_ban_ids, r.pins_restored)
                 for r in conn.execute(select(Case))}
        notices = sorted((n.account_id, n.state, n.message_id, n.recipient is None)
                         for n in conn.execute(select(Notice)))
    platform = snapshot(engine)
    for table in platform.values():
        for row in table.values():  # (the factory numbers names and addresses per build)
            for name in ("updated_at", "reversed_at", "created_at", "username", "email",
                         "display_name"):
                row.pop(name, None)
    return cases, notices, platform


def test_settle_leaves_what_verify_then_restore_leaves(
    engine: Engine, backend: str, templates: Any
) -> None:
    """One pass or two, the cases, notices and platform rows come out the same; only the
    audit trail is shorter: a reinstated case's one row goes from planned to restored."""
    from reinstatement.store.engine import make_engine

    build_scenario(engine)
    run_all(engine, request())  # the incident needs no approval: settle
    other_url = templates.new_database(backend)
    other = make_engine(other_url)
    try:
        build_scenario(other)
        runner.run_without_prefect(other, request(), PIPELINE_ACTOR, restore=False)
        ctx = step_context(other, KEY, 3)
        while runner.restore_one_batch(ctx).cases:
            pass
        assert _cases_and_platform(engine) == _cases_and_platform(other)
        with engine.connect() as conn:
            trail = conn.execute(
                select(AuditEntry.from_state, AuditEntry.to_state, AuditEntry.reason)
                .join(Case, Case.id == AuditEntry.case_id)
                .where(Case.state == CaseState.RESTORED).order_by(AuditEntry.id)).all()
    finally:
        other.dispose()
        templates.drop(other_url)
    steps_taken = [(before, after) for before, after, _ in trail]
    assert steps_taken.count((None, CaseState.PLANNED)) == steps_taken.count(
        (CaseState.PLANNED, CaseState.RESTORED)) == 3
    assert len(steps_taken) == 6
    assert all(reason.startswith("reinstated: every standing ban is a wrongful ban by spam@7; "
                                 "unban action ") and reason.endswith(" pins restored")
               for before, _, reason in trail if before == CaseState.PLANNED)


def test_a_settle_batch_restores_its_cases_in_place(engine: Engine, backend: str) -> None:
    """PostgreSQL: a settle batch writes each reinstated case's verdict as restored, so the
    restore after it changes no indexed column of the row and PostgreSQL writes that
    version without an index entry (a heap-only update, migration 0011)."""
    if backend != "postgresql":
        pytest.skip("heap-only updates are PostgreSQL's")
    scenario = build_scenario(engine)
    incident = runner.register(engine, request(), PIPELINE_ACTOR)
    runner.begin_real_run(engine, incident, PIPELINE_ACTOR)  # the function restores for a
    ctx = step_context(engine, KEY, 100)                      # running incident only
    runner.plan_all(ctx)
    with engine.begin() as conn:
        result = restore.settle_batch(conn, ctx.incident, 100, restoring=True,
                                      sender_domain="example.org")
        updates, in_place = conn.execute(text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = 'reinstatement_cases'")).one()
    reinstated = sum(1 for o in scenario.expected.values() if o == "reinstated")
    assert result.restored == reinstated == 3
    # One update per case for its verdict, one per reinstated case for its restore: each
    # restore in place.
    assert updates == len(scenario.expected) + reinstated
    assert in_place == reinstated


def test_settle_only_verifies_when_the_incident_may_not_restore(engine: Engine) -> None:
    """An incident that needs an approval it does not have is verified, never restored,
    even by a settle batch asked for it."""
    build_scenario(engine)
    req = request(require_approval=True)
    runner.register(engine, req, PIPELINE_ACTOR)
    ctx = step_context(engine, KEY, 100)
    runner.plan_all(ctx)
    before = snapshot(engine)
    result = runner.settle_one_batch(ctx)
    assert result.cases and not result.restored
    assert snapshot(engine) == before
    with engine.connect() as conn:
        states = set(conn.execute(select(Case.state)).scalars())
    assert CaseState.RESTORED not in states and CaseState.VERIFIED in states


def test_a_moderators_ban_during_a_settle_batch_is_never_overwritten(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a restore: the settle batch judges under the restore's locks, so a moderator
    who bans the account while the batch runs waits for it, and the moderator's ban wins."""
    import threading

    from reinstatement.platform_schema import accounts

    scenario = build_scenario(engine)
    req = request()
    runner.register(engine, req, PIPELINE_ACTOR)
    runner.begin_real_run(engine, step_context(engine, KEY, 100).incident, PIPELINE_ACTOR)
    ctx = step_context(engine, KEY, 100)
    runner.plan_all(ctx)
    target = min(a for a, o in scenario.expected.items() if o == "reinstated")
    judged, moderator_done = threading.Event(), threading.Event()
    postgresql = engine.dialect.name == "postgresql"
    name = "_restore_on_postgresql" if postgresql else "_apply_restores"
    real = getattr(restore, name)

    def restore_after_the_moderator_tried(*args: Any, **kwargs: Any) -> Any:
        judged.set()
        moderator_done.wait(timeout=1.5)  # the moderator commits now, unless it must wait
        return real(*args, **kwargs)

    def moderator() -> None:
        judged.wait(timeout=30)
        with engine.begin() as conn:
            Platform(conn).ban(target, None, source="moderator", created_at=T0)
            conn.execute(update(accounts).where(accounts.c.id == target)
                         .values(status="banned"))
        moderator_done.set()

    monkeypatch.setattr(restore, name, restore_after_the_moderator_tried)
    other = threading.Thread(target=moderator)
    other.start()
    result = runner.settle_one_batch(ctx)
    other.join(timeout=60)
    assert moderator_done.is_set() and result.restored == 3
    with engine.connect() as conn:
        status = conn.execute(select(accounts.c.status).where(accounts.c.id == target)
                              ).scalar_one()
        moderator_bans = conn.execute(select(func.count()).select_from(enforcement_actions)
                                      .where(enforcement_actions.c.account_id == target,
                                             enforcement_actions.c.source == "moderator",
                                             enforcement_actions.c.reversed_at.is_(None))
                                      ).scalar_one()
    assert (status, moderator_bans) == ("banned", 1)


def _planned(engine: Engine) -> tuple[list[tuple[int, str]], int]:
    """Each case's account and state, and the audit rows of planning."""
    with engine.connect() as conn:
        cases = [tuple(row) for row in conn.execute(
            select(Case.account_id, Case.state).order_by(Case.account_id))]
        audited = conn.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.from_state.is_(None), AuditEntry.to_state == CaseState.PLANNED)
        ).scalar_one()
    return cases, audited


@pytest.mark.parametrize("listed", [False, True], ids=["rules", "operator-list"])
@pytest.mark.parametrize("parallel", [2, 3, 7])
def test_planning_in_parts_makes_the_cases_one_walk_makes(
    engine: Engine, backend: str, templates: Any, listed: bool, parallel: int
) -> None:
    """Planning cuts the candidates' account ids into parts walked at once (PostgreSQL;
    SQLite walks them in one): every candidate gets exactly one case and one audit row,
    whatever the cut and the page size, and a second planning makes none."""
    from reinstatement.store.engine import make_engine

    scenario = build_scenario(engine)
    overrides: dict[str, object] = (
        {"account_ids": scenario.listed_only} if listed else {})
    runner.register(engine, request(**overrides), PIPELINE_ACTOR)
    created = runner.plan_all(step_context(engine, KEY, 2), parallel=parallel)
    other_url = templates.new_database(backend)
    other = make_engine(other_url)
    try:
        build_scenario(other)
        runner.register(other, request(**overrides), PIPELINE_ACTOR)
        assert runner.plan_all(step_context(other, KEY, 2)) == created > 0
        assert _planned(engine) == _planned(other)
    finally:
        other.dispose()
        templates.drop(other_url)
    cases, audited = _planned(engine)
    assert len(cases) == len({account for account, _ in cases}) == audited == created
    assert runner.plan_all(step_context(engine, KEY, 2), parallel=parallel) == 0
    assert _planned(engine) == (cases, audited)
