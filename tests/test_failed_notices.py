"""Notices that failed for good: the run ends Failed, and `reinstate notices resend` sends
each again, once, with its Message-ID."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from commands.reinstate import app
from flows.reinstate_incident import reinstate_incident
from flows.run_state import NoticesFailed
from reinstatement import failed_notices, resources
from reinstatement.models import Incident, Notice, Run
from reinstatement.reports import incident_report
from reinstatement.seed import SeedOptions, seed
from tests.factories import seeded_incident_request as incident_request
from tests.smtp_server import RecordingHandler

pytestmark = pytest.mark.prefect
KEY = "INC-2025-04-spam"


def _mail_server(monkeypatch: pytest.MonkeyPatch, smtp_server: Any,
                 handler: RecordingHandler) -> Any:
    server = smtp_server(handler)
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REINSTATE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("REINSTATE_SMTP_PORT", str(server.port))
    resources.forget()
    return server


def _failed_message_ids(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Notice.id, Notice.message_id)
                                 .where(Notice.state == "failed")).all())


def test_a_run_whose_notices_fail_for_good_ends_failed_and_resend_sends_each_once(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, smtp_server: Any,
) -> None:
    seed(engine, SeedOptions(accounts=200, seed=3))
    handler = RecordingHandler(refuse_every_message=True)
    server = _mail_server(monkeypatch, smtp_server, handler)

    with pytest.raises(NoticesFailed) as refused:
        reinstate_incident(incident_request(batch_size=50))
    failed = _failed_message_ids(engine)
    assert len(failed) > 20 and server.handler.delivered == []
    with engine.connect() as conn:
        counts = failed_notices.by_reason(conn)
        report = incident_report(conn, KEY)
        run_status = conn.execute(select(Run.status).order_by(Run.id.desc())).scalars().first()
    assert counts == {"554": len(failed)}
    assert f"{len(failed)} notices failed for good (554: {len(failed)})" in str(refused.value)
    assert f"reinstate notices resend {KEY}" in str(refused.value)
    assert "failed for good" in report["status_words"] and report["failed_notices"] == counts
    assert run_status == "failed"

    # The nightly reports them by reason (a dry run: it sends nothing).
    from flows.reconcile import nightly_reconciliation

    findings = nightly_reconciliation(dry_run=True, detect_days=0)
    assert findings["failed_notices"] == {KEY: {"554": len(failed)}}

    # A run again changes nothing and still does not end as a success.
    with pytest.raises(NoticesFailed):
        reinstate_incident(incident_request(batch_size=50))
    assert _failed_message_ids(engine) == failed

    # From the command line, the same run exits 1 with the count and reasons.
    result = CliRunner().invoke(app, ["run", KEY, "--faulty", "spam_burst@7",
                                      "--faulty", "image_hash@2",
                                      "--since", "2025-04-01T00:00:00Z",
                                      "--until", "2025-04-15T00:00:00Z"])
    assert result.exit_code == 1, result.output
    assert "failed for good (554" in result.output

    # Fixed: resend queues them again with the Message-IDs they were given, sends each once.
    handler.refuse_every_message = False
    result = CliRunner().invoke(app, ["notices", "resend", KEY])
    assert result.exit_code == 0, result.output
    assert f"{len(failed)} failed notice(s) queued again" in result.output
    assert sorted(handler.delivered_ids) == sorted(failed.values())
    assert set(handler.delivered_ids.values()) == {1}
    with engine.connect() as conn:
        assert failed_notices.by_reason(conn) == {}
        states = dict(conn.execute(select(Notice.id, Notice.state)
                                   .where(Notice.id.in_(list(failed)))).all())
        assert set(states.values()) == {"sent"}
        assert "failed for good" not in incident_report(conn, KEY)["status_words"]

    # Nothing left to resend: said so, nothing sent twice.
    result = CliRunner().invoke(app, ["notices", "resend", KEY])
    assert result.exit_code == 0 and "no failed notices to resend" in result.output
    assert set(handler.delivered_ids.values()) == {1}
    report = reinstate_incident(incident_request(batch_size=50))
    assert report["status"] == "completed"


def test_resend_takes_only_the_reason_and_moment_asked_for(
    engine: Engine, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    smtp_server: Any, prefect_api: str,
) -> None:
    seed(engine, SeedOptions(accounts=120, seed=4))
    handler = RecordingHandler(refuse_every_message=True)
    _mail_server(monkeypatch, smtp_server, handler)
    with pytest.raises(NoticesFailed):
        reinstate_incident(incident_request(batch_size=50))
    failed = _failed_message_ids(engine)
    handler.refuse_every_message = False

    for args in (["--reason", "550"], ["--reason", "4xx"], ["--reason", "not-sendable"],
                 ["--since", "2999-01-01T00:00:00Z"]):
        result = CliRunner().invoke(app, ["notices", "resend", KEY, *args])
        assert result.exit_code == 0, result.output
        assert "no failed notices to resend matching the filter" in result.output
    assert handler.delivered == [] and _failed_message_ids(engine) == failed

    # The deployment's flow, as the UI's form starts it, does the same as the command.
    from flows.notices import resend_notices

    outcome = resend_notices(KEY, reason="5xx", batch_size=50)
    assert outcome == {"incident": KEY, "queued": len(failed), "sent": len(failed)}
    assert sorted(handler.delivered_ids) == sorted(failed.values())
    assert set(handler.delivered_ids.values()) == {1}


@pytest.mark.parametrize(("args", "message"), [
    (["NO-SUCH-INCIDENT"], "NO-SUCH-INCIDENT"),
    ([KEY, "--reason", "five hundred"], "reason: 'five hundred' is not a reply code"),
    ([KEY, "--since", "yesterday"], "--since"),
])
def test_resend_refuses_bad_input_in_one_line_and_changes_nothing(
    engine: Engine, cli_env: dict[str, str], args: list[str], message: str,
) -> None:
    seed(engine, SeedOptions(accounts=50, seed=5))
    with engine.connect() as conn:
        before = conn.execute(select(Incident.id)).all()
    result = CliRunner().invoke(app, ["notices", "resend", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    with engine.connect() as conn:
        assert conn.execute(select(Incident.id)).all() == before
