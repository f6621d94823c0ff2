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

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError

from reinstatement import lifecycle, outbox, runner
from reinstatement.db import make_engine, utcnow
from reinstatement.lifecycle import ALLOWED, IncidentStatus
from reinstatement.models import AuditEntry, Case, Incident, Notice
from reinstatement.notices.backends import FileBackend
from reinstatement.notices.render import NoticeRenderer
from reinstatement.platform_schema import accounts, enforcement_actions, pins, rule_versions
from tests.conftest import PROJECT_ROOT
from tests.factories import T0, WRONGFUL, Platform, snapshot
from tests.test_steps import build_scenario, request, run_all

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
    with pipeline_role_engine.begin() as conn:
        lifecycle.transition(conn, waiting.id, IncidentStatus.APPROVED, "operator:ana",
                             "approved after the preview", decided_by="ana")
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
    update(Incident).values(status="approved", approval="approved", approved_by="nobody",
                            approval_decided_at=T0),
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
        "mark notices sent", "approve incidents", "rewrite parameters",
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
        "SELECT * FROM reinstatement_restore_accounts(:cases, :accounts, :reasons, :bans, "
        ":ban_accounts, 'forger', now())"
    ), {"cases": [case_id], "accounts": [account_id], "reasons": ["forged"],
        "bans": ban_ids, "ban_accounts": [account_id] * len(ban_ids)}))


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
    """Every status pair, tried as the role: exactly the lifecycle's moves are accepted."""
    build_scenario(engine)
    run_all(engine, request(dry_run=True))
    accepted = set()
    statuses = list(IncidentStatus)
    for source in statuses:
        for target in statuses:
            if source == target:
                continue
            with engine.begin() as conn:  # the owner puts the incident in `source`
                conn.execute(update(Incident).values(
                    status=str(source), approval=None, approved_by=None, approval_note=None,
                    approval_decided_at=None))
            decision = ({"approval": "approved" if target == IncidentStatus.APPROVED
                         else "rejected", "approved_by": "ana", "approval_note": "ok",
                         "approval_decided_at": utcnow()}
                        if target in (IncidentStatus.APPROVED, IncidentStatus.REJECTED) else {})
            try:
                with pipeline_role_engine.begin() as conn:
                    conn.execute(update(Incident).values(status=str(target), **decision))
                accepted.add((source, target))
            except ProgrammingError as exc:
                assert "refused" in str(exc)
    assert accepted == {(a, b) for a, targets in ALLOWED.items() for b in targets if a != b}


def test_the_role_records_a_decision_only_with_the_operator_who_made_it(
    engine: Engine, pipeline_role_engine: Engine
) -> None:
    build_scenario(engine)
    run_all(engine, request(require_approval=True))
    with pytest.raises(ProgrammingError, match="names its operator"), \
            pipeline_role_engine.begin() as conn:
        conn.execute(update(Incident).values(status="approved", approval="approved"))
    with pytest.raises(ProgrammingError, match="names its operator"), \
            pipeline_role_engine.begin() as conn:
        conn.execute(update(Incident).values(status="approved"))
    with engine.connect() as conn:
        assert conn.execute(select(Incident.status)).scalar_one() == "awaiting_approval"


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
