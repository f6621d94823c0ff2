"""Least privilege and hostile input: the pipeline does its work with no more than it needs.

The PostgreSQL role from sql/least_privilege_role.sql runs a whole incident (plan, verify,
approval, restore, notices); the same role is refused everything the contract does not
let the pipeline do: it writes nothing on the platform's tables but through the owner's
restore function, which refuses accounts and bans a reinstatement may not touch, and its
own tables refuse an incident status off the lifecycle and a notice marked sent without a
claim. Values that look like SQL travel only as bound parameters or as data that Python
evaluates, and change nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError

from reinstatement import approval, lifecycle, outbox, plan_records, runner
from reinstatement.approval import Identity
from reinstatement.incident_states import ALLOWED, IncidentStatus
from reinstatement.models import (
    AuditEntry,
    Case,
    Decision,
    Incident,
    IncidentVersion,
    Notice,
    Plan,
    PlanCase,
    Review,
)
from reinstatement.notices.backends import FileBackend
from reinstatement.notices.render import NoticeRenderer
from reinstatement.platform_schema import accounts, enforcement_actions, pins, rule_versions
from reinstatement.states import PIPELINE_ACTOR
from reinstatement.store.engine import make_engine, utcnow
from tests.conftest import PROJECT_ROOT
from tests.factories import T0, WRONGFUL, Platform, snapshot
from tests.test_steps import KEY, build_scenario, request, run_all

ROLE_SCRIPT = PROJECT_ROOT / "sql" / "least_privilege_role.sql"


@pytest.fixture
def pipeline_role_engine(engine: Engine, backend: str) -> Engine:
    if backend != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    with engine.begin() as conn:
        conn.connection.driver_connection.execute(ROLE_SCRIPT.read_text())  # type: ignore[union-attr]
    url = make_url(str(engine.url.render_as_string(hide_password=False))).set(
        username="reinstatement_pipeline", password=None)
    role_engine = make_engine(url.render_as_string(hide_password=False))
    yield role_engine  # type: ignore[misc]
    role_engine.dispose()


def test_the_pipeline_role_runs_a_whole_incident(
    engine: Engine, pipeline_role_engine: Engine, tmp_path: Path
) -> None:
    scenario = build_scenario(engine)
    run_all(pipeline_role_engine, request())
    sent = outbox.send_batch(pipeline_role_engine, FileBackend(tmp_path), NoticeRenderer(), 100,
                             sender="T&S <ts@example.com>", lease=timedelta(minutes=5))
    with engine.connect() as conn:
        outcomes = dict(conn.execute(select(Case.account_id, Case.outcome)).all())
    assert outcomes == scenario.expected
    assert sent.sent == 2 and len(list(tmp_path.glob("*.eml"))) == 2


def test_the_pipeline_role_runs_an_approved_incident(
    engine: Engine, pipeline_role_engine: Engine, tmp_path: Path
) -> None:
    scenario = build_scenario(engine)
    waiting = runner.run_without_prefect(pipeline_role_engine, request(require_approval=True))
    assert waiting.status == IncidentStatus.AWAITING_APPROVAL
    with pipeline_role_engine.begin() as conn:  # a decision relayed from the Prefect UI
        approval.decide(conn, waiting.id, "approve", Identity("ana", "prefect-ui"),
                        note="approved after the preview")
    done = runner.run_without_prefect(pipeline_role_engine, request(require_approval=True))
    assert done.status == IncidentStatus.RUNNING  # restored; its notices wait in the outbox
    with engine.connect() as conn:
        outcomes = dict(conn.execute(select(Case.account_id, Case.outcome)).all())
    assert outcomes == scenario.expected


FORGED_BAN = text(
    "INSERT INTO enforcement_actions (account_id, kind, source, actor, reason, created_at) "
    "SELECT min(id), 'ban', 'moderator', 'forged', 'forged', now() FROM accounts")


@pytest.mark.parametrize("statement", [
    update(accounts).values(status="banned"),
    FORGED_BAN,
    update(enforcement_actions).values(reversed_at=None, reversed_by_action_id=None),
    update(pins).values(status="hidden"),
    update(Notice).values(state="sent", sent_at=T0),
    update(Incident).values(status="approved"),
    insert(Decision).values(incident_id=1, plan_id=None, decision="approve",
                            decided_by="nobody", decided_via="cli", note="", decided_at=T0),
    update(Incident).values(params={"require_approval": False}),
    update(Notice).values(recipient="attacker@example.com"),
    update(accounts).values(email="attacker@example.com"),
    update(accounts).values(username="taken"),
    delete(pins),
    update(pins).values(title="defaced"),
    update(enforcement_actions).values(reason="rewritten"),
    update(rule_versions).values(status="active"),
    insert(rule_versions).values(rule_name="x", version=1, condition={}, status="active",
                                 deployed_at=T0),
    update(AuditEntry).values(reason="edited"),
    delete(Case),
    text("DROP TABLE reinstatement_notices"),
    text("ALTER TABLE accounts ADD COLUMN owned boolean"),
], ids=["ban an account", "forge a moderator ban", "un-reverse bans", "hide pins",
        "mark notices sent", "approve incidents", "record a decision", "rewrite parameters",
        "redirect notices", "account email", "username", "delete pins", "pin title", "ban reason",
        "rule status", "new rule", "audit edit", "delete cases", "drop table",
        "alter platform"])
def test_the_pipeline_role_is_refused_what_the_contract_does_not_allow(
    engine: Engine, pipeline_role_engine: Engine, statement: object
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    before = snapshot(engine)
    with pytest.raises(ProgrammingError, match="permission denied|must be owner|refused"), \
            pipeline_role_engine.begin() as conn:
        conn.execute(statement)  # type: ignore[call-overload]
    assert snapshot(engine) == before


def test_values_that_look_like_sql_are_only_data(engine: Engine) -> None:
    hostile = "x'); DROP TABLE accounts; --"
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", {"signal": "links", "op": ">=", "value": 1})
        p.rule("spam", 8, "active", {"all": [
            {"signal": "links", "op": ">=", "value": 50},
            {"signal": "note", "op": "in", "value": [hostile, "ok"]}]})
        victim = p.account(display_name=hostile, username="robert_tables")
        p.ban(victim, faulty, {**WRONGFUL, "note": hostile})
    run_all(engine, request(incident_key="INC-x.y_z:1"))
    with engine.connect() as conn:
        assert conn.execute(select(accounts.c.status).where(accounts.c.id == victim)
                            ).scalar_one() == "active"
        names = set(conn.execute(text(
            "SELECT display_name FROM accounts")).scalars())
        notices = conn.execute(select(Notice.message_id)).scalars().all()
    assert hostile in names
    assert len(notices) == 1


# -- the restore function: what a forged case can and cannot make it do ------------------

def _restore_call(conn: Connection, case_id: int, account_id: int,
                  ban_ids: list[int]) -> list[Any]:
    return list(conn.execute(text(
        "SELECT * FROM reinstatement_restore_accounts(:cases, :accounts, :bans, "
        ":ban_accounts)"
    ), {"cases": [case_id], "accounts": [account_id], "bans": ban_ids,
        "ban_accounts": [account_id] * len(ban_ids)}))


def _standing_bans(conn: Connection, account_id: int) -> list[int]:
    ea = enforcement_actions
    return list(conn.execute(select(ea.c.id).where(
        ea.c.account_id == account_id, ea.c.kind == "ban", ea.c.reversed_at.is_(None))
        .order_by(ea.c.id)).scalars())


@pytest.mark.parametrize("which", ["faulty ban only", "every standing ban"])
def test_the_restore_function_refuses_an_account_a_forged_case_names(
    engine: Engine, pipeline_role_engine: Engine, which: str
) -> None:
    """Forge the verdict of each kept_other_ban account (a moderator's ban, another active
    rule, a faulty version the incident does not name, a ban outside the window): the
    function refuses every one, and nothing on the platform moves."""
    scenario = build_scenario(engine)
    run_all(engine, request(), restore=False)
    kept = [a for a, outcome in scenario.expected.items() if outcome == "kept_other_ban"]
    assert len(kept) == 4
    before = snapshot(engine)
    for account_id in kept:
        with pipeline_role_engine.begin() as conn:
            case_id = conn.execute(select(Case.id).where(Case.account_id == account_id)
                                   ).scalar_one()
            conn.execute(update(Case).where(Case.id == case_id)
                         .values(outcome="reinstated", state="verified"))
            bans = _standing_bans(conn, account_id)
            named = bans[:1] if which == "faulty ban only" else bans
            with pytest.raises(ProgrammingError, match="refused"):
                _restore_call(conn, case_id, account_id, named)
    assert snapshot(engine) == before


def _a_verified_reinstatement(engine: Engine, role_engine: Engine
                              ) -> tuple[dict[int, str], int, int, list[int]]:
    """The scenario verified, not restored: its outcomes, and one reinstated account with
    its case and its standing bans."""
    scenario = build_scenario(engine)
    run_all(engine, request(), restore=False)
    reinstated = next(a for a, o in scenario.expected.items() if o == "reinstated")
    with role_engine.connect() as conn:
        case_id = conn.execute(select(Case.id).where(Case.account_id == reinstated)
                               ).scalar_one()
        return scenario.expected, reinstated, case_id, _standing_bans(conn, reinstated)


def test_the_restore_function_refuses_a_case_that_is_not_a_verified_reinstatement(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    expected, reinstated, case_id, bans = _a_verified_reinstatement(engine,
                                                                    pipeline_role_engine)
    other = next(a for a, o in expected.items() if o == "upheld")
    before = snapshot(engine)
    with pipeline_role_engine.connect() as conn:
        for account_id, ban_ids in ((other, bans), (reinstated, [])):
            with pytest.raises(DBAPIError, match="refused|line up"), conn.begin():
                _restore_call(conn, case_id, account_id, ban_ids)
        # The same case and bans, as verified: the one write it was made for.
        with conn.begin():
            [row] = _restore_call(conn, case_id, reinstated, bans)
    assert row.restored_account_id == reinstated
    after = snapshot(engine)
    assert after["accounts"][reinstated]["status"] == "active"
    assert after["accounts"][other] == before["accounts"][other]


def test_the_restore_function_takes_a_case_written_restored_only_by_its_own_transaction(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    """A settle batch writes a reinstatement's verdict as `restored` and restores it in the
    same transaction (migration 0011). The function takes such a case only from the
    transaction that wrote it, and only while it has no unban: a case left `restored`
    by another transaction, or one that names its unban, is refused."""
    _, reinstated, case_id, bans = _a_verified_reinstatement(engine, pipeline_role_engine)
    before = snapshot(engine)
    with pipeline_role_engine.connect() as conn:
        as_restored = update(Case).where(Case.id == case_id).values(state="restored")
        with conn.begin():
            conn.execute(as_restored)
        with pytest.raises(ProgrammingError, match="not a verified reinstatement"), \
                conn.begin():
            _restore_call(conn, case_id, reinstated, bans)
        with pytest.raises(ProgrammingError, match="not a verified reinstatement"), \
                conn.begin():
            conn.execute(as_restored.values(unban_action_id=bans[0]))
            _restore_call(conn, case_id, reinstated, bans)
        assert snapshot(engine) == before
        # Written in this transaction, with no unban yet: the settle batch's own case.
        with conn.begin():
            conn.execute(as_restored)
            [row] = _restore_call(conn, case_id, reinstated, bans)
    assert row.restored_account_id == reinstated
    assert snapshot(engine)["accounts"][reinstated]["status"] == "active"


# -- its own tables: the lifecycle and the notices' claims hold for the role ---------------

def test_the_role_moves_an_incident_only_along_the_lifecycle(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    """Every status pair, tried as the role: exactly the lifecycle's moves are accepted, and
    approved or rejected only after that decision on the newest plan."""
    build_scenario(engine)
    run_all(engine, request(dry_run=True))
    with engine.connect() as conn:
        incident_id, plan_id = conn.execute(select(Plan.incident_id, Plan.id)).one()
    accepted = set()
    statuses = list(IncidentStatus)
    for source in statuses:
        for target in statuses:
            if source == target:
                continue
            for decided in (False, True):
                with engine.begin() as conn:  # the owner puts the incident in `source`
                    conn.execute(delete(Decision))
                    conn.execute(update(Incident).values(status=str(source)))
                    if decided and target in (IncidentStatus.APPROVED, IncidentStatus.REJECTED):
                        conn.execute(insert(Decision).values(
                            incident_id=incident_id, plan_id=plan_id, note="ok",
                            decision="approve" if target == IncidentStatus.APPROVED
                            else "reject", decided_by="ana", decided_via="cli",
                            decided_at=utcnow()))
                try:
                    with pipeline_role_engine.begin() as conn:
                        conn.execute(update(Incident).values(status=str(target)))
                    accepted.add((source, target, decided))
                except ProgrammingError as exc:
                    assert "refused" in str(exc)
    allowed = {(a, b) for a, targets in ALLOWED.items() for b in targets if a != b}
    decisions = (IncidentStatus.APPROVED, IncidentStatus.REJECTED)
    assert {(a, b) for a, b, decided in accepted if decided} == allowed
    assert {(a, b) for a, b, decided in accepted if not decided} == {
        (a, b) for a, b in allowed if b not in decisions}


def test_the_role_cannot_write_a_decision_but_through_the_owners_function(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    build_scenario(engine)
    run_all(engine, request(require_approval=True))
    with pytest.raises(ProgrammingError, match="after that decision"), \
            pipeline_role_engine.begin() as conn:
        conn.execute(update(Incident).values(status="approved"))
    with engine.connect() as conn:
        plan_id, digest = conn.execute(select(Plan.id, Plan.digest)).one()
    with pytest.raises(ProgrammingError, match="permission denied"), \
            pipeline_role_engine.begin() as conn:
        conn.execute(insert(Decision).values(
            incident_id=1, plan_id=plan_id, decision="approve", decided_by="ana",
            decided_via="cli", note="", decided_at=T0))
    with engine.connect() as conn:
        assert conn.execute(select(Incident.status)).scalar_one() == "awaiting_approval"
        assert conn.execute(select(func.count()).select_from(Decision)).scalar_one() == 0


def test_the_role_marks_a_notice_sent_only_from_its_claim(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    with pipeline_role_engine.connect() as conn:
        [notice_id, *_] = conn.execute(select(Notice.id).where(Notice.state == "pending")
                                       .order_by(Notice.id)).scalars()
        conn.rollback()
        one = update(Notice).where(Notice.id == notice_id)
        for values in ({"state": "sent", "sent_at": T0}, {"state": "failed"},
                       {"state": "retry"}, {"state": "sending", "claim_token": None},
                       {"state": "no_address"}):
            with pytest.raises(ProgrammingError, match="refused"), conn.begin():
                conn.execute(one.values(**values))
        with conn.begin():  # a claim, then its sent state: the pipeline's own path
            conn.execute(one.values(state="sending", claim_token="t" * 32))
            conn.execute(one.values(state="sent", sent_at=T0))
        with pytest.raises(ProgrammingError, match="settled"), conn.begin():
            conn.execute(one.values(state="pending", sent_at=None))


def test_the_role_queues_a_failed_notice_again_only_unsent_unclaimed_and_as_it_was(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    """`reinstate notices resend` under the role: a failed notice may become pending again,
    unclaimed, unsent, with its recipient and Message-ID; nothing else about it changes."""
    from reinstatement import failed_notices

    build_scenario(engine)
    run_all(engine, request())
    with engine.begin() as conn:
        [notice_id, *_] = conn.execute(select(Notice.id).where(Notice.state == "pending")
                                       .order_by(Notice.id)).scalars()
        conn.execute(update(Notice).where(Notice.id == notice_id).values(
            state="failed", last_error_code=550, last_error_text="no such user"))
    one = update(Notice).where(Notice.id == notice_id)
    with pipeline_role_engine.connect() as conn:
        for values in ({"state": "pending", "claim_token": "t" * 32},
                       {"state": "pending", "sent_at": T0},
                       {"state": "pending", "message_id": "<other@example.com>"},
                       {"state": "sent", "sent_at": T0}):
            with pytest.raises(ProgrammingError, match="refused"), conn.begin():
                conn.execute(one.values(**values))
        with conn.begin():
            incident_id = conn.execute(select(Notice.incident_id).where(
                Notice.id == notice_id)).scalar_one()
            queued = failed_notices.requeue(conn, incident_id, PIPELINE_ACTOR, reason="5xx")
    assert queued.notices == 1
    assert _scalar(engine, select(Notice.state).where(Notice.id == notice_id)) == "pending"


# -- an approval approves a plan: nothing the role writes or calls restores outside one ----

def _scalar(engine: Engine, statement: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(statement).scalar_one()


def _ids(engine: Engine, statement: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(statement).scalars())


def _restore(case_ids: list[int], account_ids: list[int], ban_ids: list[int],
             ban_accounts: list[int]) -> Any:
    return lambda conn: list(conn.execute(text(
        "SELECT * FROM reinstatement_restore_accounts(:cases, :accounts, :bans, "
        ":ban_accounts)"), {"cases": case_ids, "accounts": account_ids, "bans": ban_ids,
                            "ban_accounts": ban_accounts}))


def _decide(plan_id: int, digest: str, decision: str, by: str, via: str = "cli",
            note: str = "checked") -> Any:
    return lambda conn: conn.execute(text(
        "SELECT reinstatement_record_decision(:plan, :digest, :decision, :by, :via, NULL, "
        ":note)"), {"plan": plan_id, "digest": digest, "decision": decision, "by": by,
                    "via": via, "note": note})


def test_nothing_the_role_writes_or_calls_restores_outside_an_approved_plan(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    """As the pipeline's role: each attempt below is refused by the database, and no
    platform row changes. At the end, the one path that restores (a plan approved by
    another person, its own cases, exactly its bans) does, under the function's own actor
    and time."""
    scenario = build_scenario(engine)
    with engine.begin() as conn:  # an account banned only by an active, correct rule
        p = Platform(conn)
        correct = conn.execute(select(rule_versions.c.id).where(
            rule_versions.c.rule_name == "abuse")).scalar_one()
        older = conn.execute(select(rule_versions.c.id).where(
            rule_versions.c.rule_name == "spam", rule_versions.c.version == 6)).scalar_one()
        rightly = p.account()
        right_ban = p.ban(rightly, correct, {"reports": 40})
        p.pin(rightly, hidden_by=right_ban)
    runner.run_without_prefect(pipeline_role_engine, request(require_approval=True))
    incident_id = _scalar(engine, select(Incident.id))
    plan_id, digest = _scalar(engine, select(Plan.id)), _scalar(engine, select(Plan.digest))
    declarer = _scalar(engine, select(Incident.declared_by))
    case_of = dict(_rows(engine, select(Case.account_id, Case.id)))
    reinstated = [a for a, o in scenario.expected.items() if o == "reinstated"]
    a, b = reinstated[0], reinstated[1]
    bans_a, bans_b = scenario.reinstated_bans[a], scenario.reinstated_bans[b]
    review_account = next(x for x, o in scenario.expected.items() if o == "needs_review")
    before = snapshot(engine)
    attempts: dict[str, Any] = {
        # The incident waits for approval of its plan.
        "restore a case of an incident awaiting approval":
            _restore([case_of[a]], [a], bans_a, [a] * len(bans_a)),
        "move the incident to running without approval":
            lambda conn: conn.execute(update(Incident).values(status="running")),
        "move the incident to approved without a decision":
            lambda conn: conn.execute(update(Incident).values(status="approved")),
        "write a decision directly": lambda conn: conn.execute(insert(Decision).values(
            incident_id=incident_id, plan_id=plan_id, decision="approve", decided_by="x",
            decided_via="cli", note="", decided_at=T0)),
        "approve as the incident's declarer": _decide(plan_id, digest, "approve", declarer),
        "approve as the declarer, in other case": _decide(plan_id, digest, "approve",
                                                          f" {declarer.upper()} "),
        "approve naming another digest": _decide(plan_id, "0" * 64, "approve", "mallory"),
        "approve from an unknown place": _decide(plan_id, digest, "approve", "mallory",
                                                 via="database-role"),
        "decide something other than approve or reject":
            _decide(plan_id, digest, "restore", "mallory"),
        "reject without saying why": _decide(plan_id, digest, "reject", "mallory", note=" "),
        "a decision on a plan that does not exist": _decide(plan_id + 99, digest, "approve",
                                                           "mallory"),
        "add an entry to the written plan": lambda conn: conn.execute(insert(PlanCase).values(
            plan_id=plan_id, case_id=case_of[rightly] if rightly in case_of else 10**9,
            account_id=rightly, round=1, verdict="reinstated", ban_ids=str(right_ban))),
        "change an entry of the plan": lambda conn: conn.execute(
            update(PlanCase).values(verdict="reinstated")),
        "delete an entry of the plan": lambda conn: conn.execute(delete(PlanCase)),
        "change the plan's digest": lambda conn: conn.execute(
            update(Plan).values(digest="f" * 64)),
        "write a plan with its digest": lambda conn: conn.execute(insert(Plan).values(
            incident_id=incident_id, digest="e" * 64, cases=0, dry_run=False,
            created_by="x", created_at=T0)),
        "rewrite who declared the incident": lambda conn: conn.execute(
            update(Incident).values(declared_by="someone-else")),
        "write a review directly": lambda conn: conn.execute(insert(Review).values(
            incident_id=incident_id, case_id=case_of[review_account], decision="reinstate",
            reviewed_by="x", reviewed_via="cli", note="x", decided_at=T0)),
        "the old restore, with an actor and a date of the caller's": lambda conn: conn.execute(
            text("SELECT * FROM reinstatement_restore_accounts(:c, :a, :r, :b, :ba, "
                 "'mod_alex', '1999-01-01')"), {"c": [case_of[a]], "a": [a], "r": ["x"],
                                                "b": bans_a, "ba": [a] * len(bans_a)}),
    }
    refusals = _all_refused(pipeline_role_engine, attempts)
    assert snapshot(engine) == before, refusals

    # Approved by another person (a decision the role relays from the Prefect UI): running.
    with pipeline_role_engine.begin() as conn:
        approval.decide(conn, incident_id, "approve", Identity("ops-oncall", "prefect-ui"),
                        note="plan read")
        lifecycle.transition(conn, incident_id, IncidentStatus.RUNNING, "flow-run:x", "run")
    with engine.begin() as conn:  # a new wrongful ban after the approval: not in the plan
        newcomer = Platform(conn).account()
        spam7 = conn.execute(select(rule_versions.c.id).where(
            rule_versions.c.rule_name == "spam", rule_versions.c.version == 7)).scalar_one()
        new_ban = Platform(conn).ban(newcomer, spam7, WRONGFUL)
    with pipeline_role_engine.begin() as conn:  # its case, forged as verified
        forged = conn.execute(insert(Case).values(
            incident_id=incident_id, account_id=newcomer, state="verified",
            outcome="reinstated", standing_ban_ids=[new_ban], created_at=T0, updated_at=T0
        ).returning(Case.id)).scalar_one()
        conn.execute(update(Case).where(Case.account_id == review_account).values(
            state="verified", outcome="reinstated", review_decision="reinstate"))
    review_case = case_of[review_account]
    review_bans = _ids(engine, select(enforcement_actions.c.id).where(
        enforcement_actions.c.account_id == review_account,
        enforcement_actions.c.reversed_at.is_(None)))
    with engine.begin() as conn:  # a second incident, to mix into a batch
        other_incident = conn.execute(insert(Incident).values(
            key="INC-OTHER", params={"require_approval": False}, params_digest="x",
            status="running", declared_by="x", declared_via="cli", created_at=T0,
            updated_at=T0).returning(Incident.id)).scalar_one()
        other_case = conn.execute(insert(Case).values(
            incident_id=other_incident, account_id=b, state="verified", outcome="reinstated",
            created_at=T0, updated_at=T0).returning(Case.id)).scalar_one()
    before = snapshot(engine)
    attempts = {
        "restore a case the approved plan does not hold":
            _restore([forged], [newcomer], [new_ban], [newcomer]),
        "restore the approved plan's case with a ban fewer":
            _restore([case_of[b]], [b], bans_b[:1], [b]),
        "restore the approved plan's case with a ban more":
            _restore([case_of[a]], [a], [*bans_a, bans_b[0]], [a] * (len(bans_a) + 1)),
        "restore an uncertain case after forging its reviewer's decision":
            _restore([review_case], [review_account], review_bans,
                     [review_account] * len(review_bans)),
        "restore another account under the plan's case":
            _restore([case_of[a]], [b], bans_b, [b] * len(bans_b)),
        "mix two incidents' cases in one batch":
            _restore([case_of[a], other_case], [a, b], [*bans_a, *bans_b],
                     [a] * len(bans_a) + [b] * len(bans_b)),
        "name one case twice": _restore([case_of[a], case_of[a]], [a, b], [*bans_a, *bans_b],
                                        [a] * len(bans_a) + [b] * len(bans_b)),
        "name one account twice": _restore([case_of[a], case_of[b]], [a, a], bans_a,
                                           [a] * len(bans_a)),
        "arrays that do not line up": _restore([case_of[a]], [a], bans_a, []),
        "a second decision on the approved plan": _decide(plan_id, digest, "reject",
                                                          "mallory"),
    }
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    assert snapshot(engine) == before, refusals

    # A newer plan supersedes the approved one: nothing more restores until it is approved.
    with pipeline_role_engine.begin() as conn:
        superseding = plan_records.make_plan(conn, runner_incident(engine), "flow-run:y",
                                             dry_run=True)
    assert superseding.new
    attempts = {"restore under a superseded plan":
                _restore([case_of[a]], [a], bans_a, [a] * len(bans_a))}
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    with pipeline_role_engine.begin() as conn:
        lifecycle.transition(conn, incident_id, IncidentStatus.AWAITING_APPROVAL, "x", "x")
    attempts = {"approve the superseded plan": _decide(plan_id, digest, "approve", "mallory")}
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    assert "superseded" in refusals["approve the superseded plan"]
    assert snapshot(engine) == before, refusals

    # Rejected: final.
    with pipeline_role_engine.begin() as conn:
        approval.decide(conn, incident_id, "reject", Identity("ops-oncall", "cli"),
                        note="not this one")
    attempts = {"restore a rejected incident's previewed case":
                _restore([case_of[a]], [a], bans_a, [a] * len(bans_a)),
                "approve a rejected incident": _decide(superseding.plan.id,
                                                       superseding.plan.digest, "approve",
                                                       "mallory"),
                "move a rejected incident to running": lambda conn: conn.execute(
                    update(Incident).where(Incident.id == incident_id)
                    .values(status="running"))}
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    assert snapshot(engine) == before, refusals

    # An incident of the role's own, naming an active and correct rule (or a correction
    # older than the faulty version), with no approval asked for, and a forged case.
    with pipeline_role_engine.begin() as conn:
        own = conn.execute(insert(Incident).values(
            key="INC-FORGED", params={"require_approval": False}, params_digest="x",
            declared_by="mallory", declared_via="cli", created_at=T0, updated_at=T0
        ).returning(Incident.id)).scalar_one()
        conn.execute(insert(IncidentVersion).values(
            incident_id=own, faulty_rule_version_id=correct, faulty_name="abuse@2"))
        forged_right = conn.execute(insert(Case).values(
            incident_id=own, account_id=rightly, state="verified", outcome="reinstated",
            created_at=T0, updated_at=T0).returning(Case.id)).scalar_one()
        conn.execute(update(Incident).where(Incident.id == own).values(status="running"))
    attempts = {"restore a correct rule's ban under an incident naming it faulty":
                _restore([forged_right], [rightly], [right_ban], [rightly])}
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    assert "names abuse@2 as faulty" in refusals[next(iter(attempts))]
    with engine.begin() as conn:  # the same incident names spam@7, "corrected" by spam@6
        conn.execute(delete(IncidentVersion).where(IncidentVersion.incident_id == own))
        conn.execute(insert(IncidentVersion).values(
            incident_id=own, faulty_rule_version_id=spam7, faulty_name="spam@7",
            corrected_rule_version_id=older, corrected_name="spam@6"))
        moved = conn.execute(insert(Case).values(
            incident_id=own, account_id=newcomer, state="verified", outcome="reinstated",
            created_at=T0, updated_at=T0).returning(Case.id)).scalar_one()
    attempts = {"restore under a correction older than the faulty version": _restore(
        [moved], [newcomer], [new_ban], [newcomer])}
    refusals.update(_all_refused(pipeline_role_engine, attempts))
    assert "names spam@7 as faulty" in refusals[next(iter(attempts))]
    assert snapshot(engine) == before, refusals
    assert len(refusals) == 36, sorted(refusals)
    if os.environ.get("REINSTATE_SHOW_REFUSALS"):
        for name, message in refusals.items():
            print(f"{name}: {message}")  # noqa: T201 - for the note on what was tried


def _rows(engine: Engine, statement: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(statement).all())


def runner_incident(engine: Engine) -> Any:
    from reinstatement.incidents import load_incident

    with engine.connect() as conn:
        return load_incident(conn, KEY)


def _all_refused(role_engine: Engine, attempts: dict[str, Any]) -> dict[str, str]:
    """Each attempt in a transaction of its own, as the role: every one raises (a refusal,
    a missing privilege or function); what each said."""
    said = {}
    for name, attempt in attempts.items():
        with pytest.raises(DBAPIError) as caught, role_engine.begin() as conn:
            attempt(conn)
        message = str(caught.value.orig).splitlines()[0]
        assert any(word in message for word in (
            "refused", "permission denied", "does not exist", "line up", "named twice")), (
            name, message)
        said[name] = message
    return said


def test_the_pipeline_role_restores_an_approved_plan_as_itself_and_at_the_databases_time(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    build_scenario(engine)
    runner.run_without_prefect(pipeline_role_engine, request(require_approval=True))
    with pipeline_role_engine.begin() as conn:
        approval.decide(conn, _scalar(engine, select(Incident.id)), "approve",
                        Identity("ops-oncall", "prefect-ui"), note="plan read")
    started = _scalar(engine, select(func.now()))
    done = runner.run_without_prefect(pipeline_role_engine, request(require_approval=True))
    assert done.status == IncidentStatus.RUNNING
    ea = enforcement_actions
    unbans = _rows(engine, select(ea.c.actor, ea.c.created_at, ea.c.reason).where(
        ea.c.kind == "unban", ea.c.source == "reinstatement"))
    assert len(unbans) == 3
    assert {actor for actor, _, _ in unbans} == {PIPELINE_ACTOR}
    assert all(at >= started for _, at, _ in unbans)
    assert all(reason == f"Reinstated by incident {KEY}: the ban by spam@7 was a mistake"
               for _, _, reason in unbans)


@pytest.fixture
def personal_roles(engine: Engine, pipeline_role_engine: Engine) -> Any:
    """Two people's own database roles, members of the pipeline's role; engines for each."""
    import uuid

    suffix = uuid.uuid4().hex[:8]
    names = [f"ana_{suffix}", f"ben_{suffix}"]
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
            conn.execute(text(f'GRANT reinstatement_pipeline TO "{name}"'))
    base = make_url(str(engine.url.render_as_string(hide_password=False)))
    engines = {name: make_engine(base.set(username=name, password=None)
                                 .render_as_string(hide_password=False)) for name in names}
    yield engines
    for role_engine in engines.values():
        role_engine.dispose()
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE "{name}"'))


def test_a_person_connected_as_their_own_role_is_that_person(
    engine: Engine, personal_roles: dict[str, Engine], cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connected as a person's own database role, the command line declares and decides as
    that role, whatever name is given: its holder may not approve their own incident, nor
    pass for someone else; another person's role approves it."""
    from tests.test_cli import describe, invoke

    build_scenario(engine)
    ana, ben = personal_roles
    ana_engine = personal_roles[ana]
    state = runner.run_without_prefect(ana_engine, request(require_approval=True))
    assert (state.status, state.declared_by, state.declared_via) == (
        "awaiting_approval", ana, "database-role")
    before = snapshot(engine)
    with ana_engine.connect() as conn:
        assert approval.process_identity(conn) == Identity(ana, "database-role")
    monkeypatch.setenv("REINSTATE_DATABASE_URL", ana_engine.url.render_as_string(
        hide_password=False))
    own = invoke("approve", KEY, "--operator", "someone else", "--note", "fine")
    assert own.exit_code == 2 and f"{ana} declared incident" in own.stderr, describe(own)
    plan_id, digest = _scalar(engine, select(Plan.id)), _scalar(engine, select(Plan.digest))
    attempts = {
        "decide as a person's own role under another name":
            _decide(plan_id, digest, "approve", ben, via="database-role"),
        "decide as a person's own role, relayed as from the Prefect UI":
            _decide(plan_id, digest, "approve", "ops-oncall", via="prefect-ui"),
        "declare an incident as a person's own role under another name":
            lambda conn: conn.execute(insert(Incident).values(
                key="INC-AS-BEN", params={}, params_digest="x", declared_by=ben,
                declared_via="database-role", created_at=T0, updated_at=T0)),
        "review a case as a person's own role under another name":
            lambda conn: conn.execute(text(
                "SELECT reinstatement_record_review(:case, 'reinstate', :by, "
                "'database-role', 'x')"), {"case": _scalar(engine, select(func.min(
                    Case.id)).where(Case.state == "review")), "by": ben}),
    }
    said = _all_refused(ana_engine, attempts)
    assert all("connected as database role" in message for message in said.values()), said
    assert snapshot(engine) == before

    monkeypatch.setenv("REINSTATE_DATABASE_URL", personal_roles[ben].url.render_as_string(
        hide_password=False))
    approved = invoke("approve", KEY, "--note", "plan read")
    assert approved.exit_code == 0, describe(approved)
    assert f"approved by {ben} (database role)" in approved.stdout
    with engine.connect() as conn:
        decision = conn.execute(select(Decision.decided_by, Decision.decided_via,
                                       Decision.database_role)).one()
    assert tuple(decision) == (ben, "database-role", ben)
    done = runner.run_without_prefect(ana_engine, request(require_approval=True))
    assert done.status == IncidentStatus.RUNNING and done.approved
