"""Least privilege and hostile input: the pipeline does its work with no more than it needs.

The PostgreSQL role from sql/least_privilege_role.sql runs a whole incident (plan, verify,
restore, notices); the same role is refused everything the contract does not let the
pipeline do. Values that look like SQL travel only as bound parameters or as data that
Python evaluates, and change nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from reinstatement import outbox
from reinstatement.db import make_engine
from reinstatement.models import AuditEntry, Case, Notice
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


@pytest.mark.parametrize("statement", [
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
], ids=["account email", "username", "delete pins", "pin title", "ban reason",
        "rule status", "new rule", "audit edit", "delete cases", "drop table",
        "alter platform"])
def test_the_pipeline_role_is_refused_what_the_contract_does_not_allow(
    engine: Engine, pipeline_role_engine: Engine, statement: object
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    before = snapshot(engine)
    with pytest.raises(ProgrammingError, match="permission denied|must be owner"), \
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
