"""Human review: a reviewer's decision reinstates (restore and notice) or upholds, audited."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from reinstatement.errors import BadInput
from reinstatement.models import AuditEntry, Case, Notice
from reinstatement.platform_schema import accounts, pins
from reinstatement.review import apply_review, cases_awaiting_review
from tasks.notify import send_case_notices
from tests.factories import Platform, snapshot
from tests.test_steps import KEY, build_scenario, request, run_all

# A review sends with the process's own backend, secret and limits, as the CLI does.
decide = partial(apply_review, send_notices=send_case_notices)


def review_cases(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return list(cases_awaiting_review(conn, KEY))


def test_cases_waiting_for_review_say_why(engine: Engine) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    waiting = review_cases(engine)
    assert {c["account_id"] for c in waiting} == {
        a for a, o in scenario.expected.items() if o == "needs_review"}
    for case in waiting:
        assert str(case["why"]).startswith("needs review: spam@8 is unknown on ban")


def test_reinstate_decision_restores_notifies_and_is_audited(
    engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    case = review_cases(engine)[0]
    result = decide(int(case["case_id"]), "reinstate", "rev-ana", "evidence was lost")  # type: ignore[call-overload]
    assert (result["outcome"], result["state"]) == ("reinstated", "restored")
    account = int(case["account_id"])  # type: ignore[call-overload]
    with engine.connect() as conn:
        status = conn.execute(select(accounts.c.status).where(accounts.c.id == account)
                              ).scalar_one()
        hidden = conn.execute(select(pins.c.id).where(
            pins.c.account_id == account, pins.c.status == "hidden",
            pins.c.hidden_by_action_id.is_not(None))).all()
        notice = conn.execute(select(Notice.state).where(
            Notice.account_id == account)).scalar_one()
        audit = conn.execute(select(AuditEntry.actor, AuditEntry.reason).where(
            AuditEntry.case_id == case["case_id"]).order_by(AuditEntry.id)).all()
    assert status == "active" and hidden == [] and notice == "sent"
    assert len(list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))) == 1
    assert ("reviewer:rev-ana", "reinstate: evidence was lost") in [tuple(a) for a in audit]
    assert any(actor == "reviewer:rev-ana" and "reinstated" in reason
               for actor, reason in audit)


def test_uphold_decision_closes_the_case_and_changes_no_platform_row(
    engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    before = snapshot(engine)
    case = review_cases(engine)[0]
    result = decide(int(case["case_id"]), "uphold", "rev-bo", "the signal is real")  # type: ignore[call-overload]
    assert (result["outcome"], result["state"]) == ("upheld", "closed")
    assert snapshot(engine) == before
    with engine.connect() as conn:
        reviewed = conn.execute(select(Case.reviewed_by, Case.review_note).where(
            Case.id == case["case_id"])).one()
    assert tuple(reviewed) == ("rev-bo", "the signal is real")


def test_bans_changed_since_review_are_not_overwritten(
    engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    case = review_cases(engine)[0]
    with engine.begin() as conn:
        Platform(conn).ban(int(case["account_id"]), None, source="moderator")  # type: ignore[call-overload]
    before = snapshot(engine)
    result = decide(int(case["case_id"]), "reinstate", "rev-ana", "looks fine")  # type: ignore[call-overload]
    assert result["outcome"] == "kept_other_ban"
    assert snapshot(engine) == before


@pytest.mark.parametrize(("reviewer", "note", "message"), [
    ("", "why", "--reviewer"), ("rev", "  ", "--note"), ("x" * 101, "why", "--reviewer"),
])
def test_a_decision_needs_a_reviewer_and_a_note(
    engine: Engine, cli_env: dict[str, str], reviewer: str, note: str, message: str
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    case = review_cases(engine)[0]
    before = snapshot(engine)
    with pytest.raises(BadInput, match=message):
        decide(int(case["case_id"]), "reinstate", reviewer, note)  # type: ignore[call-overload]
    assert snapshot(engine) == before


def test_only_cases_waiting_for_review_can_be_decided(
    engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    with engine.connect() as conn:
        restored = conn.execute(select(Case.id).where(Case.state == "restored")).scalars().first()
    with pytest.raises(BadInput, match="not waiting for review"):
        decide(int(restored or 0), "uphold", "rev", "why")
    with pytest.raises(BadInput, match="no case 999999"):
        decide(999999, "uphold", "rev", "why")


@pytest.mark.prefect
def test_a_reviewers_notice_logs_in_with_the_secret_block_as_the_notify_step_does(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], smtp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`reinstate review decide --reinstate` sends the case's notice through the same
    backend as the notify step, its SMTP password read from the Prefect Secret block that
    REINSTATE_SMTP_PASSWORD_BLOCK names (it once built its own, without the password)."""
    from prefect.blocks.system import Secret
    from typer.testing import CliRunner

    from commands.reinstate import app
    from tests.test_email_backends import PASSWORD, accept_password

    build_scenario(engine)
    run_all(engine, request())
    case = review_cases(engine)[0]
    server = smtp_server(authenticator=accept_password, auth_require_tls=False)
    Secret(value=PASSWORD).save("reinstatement-review-smtp", overwrite=True)
    for name, value in (("REINSTATE_EMAIL_BACKEND", "smtp"),
                        ("REINSTATE_SMTP_HOST", "127.0.0.1"),
                        ("REINSTATE_SMTP_PORT", str(server.port)),
                        ("REINSTATE_SMTP_USERNAME", "mailer"),
                        ("REINSTATE_SMTP_PASSWORD_BLOCK", "reinstatement-review-smtp")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REINSTATE_SMTP_PASSWORD", raising=False)
    result = CliRunner().invoke(app, ["review", "decide", str(case["case_id"]), "--reinstate",
                                      "--reviewer", "rev-ana", "--note", "evidence was lost"])
    assert result.exit_code == 0, result.output
    assert "notice: sent 1, retry 0, failed 0" in result.stdout
    (delivered,) = server.handler.delivered
    assert delivered.authenticated
