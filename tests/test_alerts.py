"""Events and alerts as an operator meets them.

The incident's milestones are Prefect events, read back from the server the runs talk
to; `reinstate deploy` (and `serve`) create the operators' automations once, by name; and
against a real `prefect server start`, with a webhook block pointing at a receiver on this
machine, a failed pipeline run and an incident left awaiting approval each reach the
receiver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner, Result

from commands.reinstate import app
from deployments.alerts import (
    ALERT_AWAITING_APPROVAL,
    ALERT_NAMES,
    ALERT_NIGHTLY_OVERDUE,
    ALERT_RUN_FAILED,
    NOT_SET,
)
from flows.reinstate_incident import reinstate_incident
from flows.run_state import NoticesFailed
from reinstatement import audit, lifecycle, resources
from reinstatement.incident_states import IncidentStatus
from reinstatement.models import Case, Incident
from reinstatement.platform_schema import accounts
from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_SINCE, INCIDENT_UNTIL, SeedOptions, seed
from tasks import events
from tasks.limits import forget_known_limits
from tests.factories import APPROVER
from tests.factories import seeded_incident_request as incident_request
from tests.smtp_server import RecordingHandler

pytestmark = pytest.mark.prefect
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BLOCK = "custom-webhook/ops-alerts"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _key(what: str) -> str:
    return f"INC-{what}-{uuid.uuid4().hex[:8]}"


def read_events(resource_id: str, since: datetime, *, count: int,
                timeout: float = 60) -> list[Any]:
    """The events of `resource_id` since `since`, oldest first, once `count` of them are
    stored (the server stores events a few seconds after they arrive)."""
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        wanted = EventFilter(  # its end is now: made again for each look
            occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
            resource=EventResourceFilter(id=[resource_id]))
        with get_client(sync_client=True) as client:
            found = client.read_events(filter=wanted, limit=50).events
        if len(found) >= count or time.monotonic() > deadline:
            return sorted(found, key=lambda event: event.occurred)
        time.sleep(1)


def trail_events(engine: Engine, key: str) -> list[str]:
    """The event each of the incident's own transitions in its audit trail should be."""
    with engine.connect() as conn:
        incident_id = conn.execute(select(Incident.id).where(Incident.key == key)).scalar_one()
        return [events.TRANSITION_EVENTS[IncidentStatus(row["to"])]
                for row in audit.trail(conn, incident_id)
                if row["to"] in set(IncidentStatus)]


def assert_names_the_incident(event: Any, key: str) -> None:
    assert event.resource.id == f"reinstatement.incident.{key}"
    assert event.resource.name == key
    assert [(r.id, r.name) for r in event.related if r.role == "incident"] == [
        (f"reinstatement.incident.{key}", key)]


# -- the events of a real incident, read back from the server --------------------------


def _mail_refusing_everything(monkeypatch: pytest.MonkeyPatch, smtp_server: Any) -> Any:
    """Notices go by SMTP to a server that refuses every message for good (554)."""
    server = smtp_server(RecordingHandler(refuse_every_message=True))
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REINSTATE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("REINSTATE_SMTP_PORT", str(server.port))
    resources.forget()
    return server


def test_each_transition_of_an_incident_is_one_event_as_its_audit_trail_says(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Declared with approval by a dry run, previewed for a real run, approved on the
    command line, restored: registered, previewed, awaiting-approval, approved, running,
    completed, in that order, one each, each naming the incident, the decision naming the
    operator."""
    seed(engine, SeedOptions(accounts=150, seed=4))
    key = _key("events")
    since = datetime.now(UTC) - timedelta(seconds=5)
    reinstate_incident(incident_request(incident_key=key, require_approval=True,
                                        dry_run=True))
    reinstate_incident(incident_request(incident_key=key, require_approval=True))
    monkeypatch.setenv("LOGNAME", APPROVER)  # someone other than the declarer approves
    approved = invoke("approve", key, "--note", "samples read")
    assert approved.exit_code == 0, approved.output
    report = reinstate_incident(incident_request(incident_key=key, require_approval=True))
    assert report["status"] == "completed"

    expected = [events.REGISTERED, events.TRANSITION_EVENTS[IncidentStatus.PREVIEWED],
                events.AWAITING_APPROVAL, events.APPROVED, events.RUNNING, events.COMPLETED]
    assert trail_events(engine, key) == expected
    found = read_events(events.incident_resource_id(key), since, count=len(expected))
    assert [event.event for event in found] == expected
    for event in found:
        assert_names_the_incident(event, key)
    decision = found[3]
    assert decision.payload["actor"] == f"operator:{APPROVER}"
    assert decision.payload["from"] == "awaiting_approval"
    # The run's own events carry the run: Prefect relates them to the flow run.
    assert any(r.role == "flow-run" for r in found[-1].related)


def test_a_run_that_leaves_notices_failed_says_so_once_with_the_reasons(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, smtp_server: Any,
) -> None:
    seed(engine, SeedOptions(accounts=150, seed=3))
    _mail_refusing_everything(monkeypatch, smtp_server)
    key = _key("notices")
    since = datetime.now(UTC) - timedelta(seconds=5)
    with pytest.raises(NoticesFailed) as refused:
        reinstate_incident(incident_request(incident_key=key, batch_size=50))

    found = read_events(events.incident_resource_id(key), since, count=5)
    names = [event.event for event in found]
    assert names == [events.REGISTERED, events.RUNNING, events.COMPLETED,
                     events.NOTICES_FAILED, events.RUN_FAILED]
    notices = found[3].payload
    assert notices["count"] > 20 and notices["by_reason"] == {"554": notices["count"]}
    failed = found[4].payload
    assert failed["state"] == "Failed" and failed["message"] == str(refused.value)
    for event in found:
        assert_names_the_incident(event, key)


def test_the_nightly_announces_broken_invariants(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
) -> None:
    from flows.reconcile import InvariantsBroken, nightly_reconciliation

    seed(engine, SeedOptions(accounts=150, seed=5))
    key = _key("nightly")
    reinstate_incident(incident_request(incident_key=key))
    with engine.begin() as conn:  # banned again, with nothing on the platform to say why
        case_id, account_id = conn.execute(
            select(Case.id, Case.account_id).where(Case.state == "restored")
            .order_by(Case.id)).first()  # type: ignore[misc]
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(status="banned"))
    since = datetime.now(UTC)  # the events' clock is this process's
    with pytest.raises(InvariantsBroken):
        nightly_reconciliation(detect_days=0)
    found = read_events("reinstatement.reconciliation", since, count=1)
    (event,) = found
    assert event.event == events.INVARIANTS_BROKEN
    assert event.payload["banned_without_cause"] == 1 and event.payload["unrepaired"] == 1
    assert event.payload["sample_cases"] == [case_id]


def test_an_event_that_cannot_be_sent_never_fails_the_run(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def refusing_emit(**kwargs: Any) -> Any:
        raise ConnectionError("the events endpoint refused the event")

    monkeypatch.setattr(events, "emit_event", refusing_emit)
    seed(engine, SeedOptions(accounts=100, seed=6))
    report = reinstate_incident(incident_request(incident_key=_key("refused")))
    assert report["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("reinstatement.incident.completed could not be emitted" in w
               and "refused the event" in w for w in warnings), warnings


# -- the automations, created by deploy and serve --------------------------------------

def test_deploy_refuses_an_alert_block_the_server_lacks_and_changes_nothing(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REINSTATE_ALERT_BLOCK", "slack-webhook/no-such-block")
    with get_client(sync_client=True) as client:
        deployments_before = len(client.read_deployments())
    result = invoke("deploy", "--pool", "alerts-refused")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: REINSTATE_ALERT_BLOCK: there is no block slack-webhook/no-such-block on the "
        "Prefect server: create a Slack webhook or custom webhook block of that name first "
        "(Blocks in the Prefect UI), or correct the setting"]
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):
            client.read_work_pool("alerts-refused")
        assert len(client.read_deployments()) == deployments_before
        assert not any(a.name in ALERT_NAMES for a in client.read_automations())

    monkeypatch.setenv("REINSTATE_ALERT_BLOCK", "no-slash")
    result = invoke("deploy", "--pool", "alerts-refused")
    assert result.exit_code == 2 and "REINSTATE_ALERT_BLOCK" in result.output


class Receiver:
    """A webhook receiver on this machine: every POST's JSON body, as it arrived."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, matches: Callable[[dict[str, Any]], bool],
                 timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.received):
                if matches(message):
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no such notification within {timeout:.0f} s: {self.received}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def alert_block(real_prefect_api: str, receiver: Receiver,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Custom Webhook block posting to the receiver, named by REINSTATE_ALERT_BLOCK."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(
        name="ops-alerts", url=receiver.url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("ops-alerts", overwrite=True)
    monkeypatch.setenv("REINSTATE_ALERT_BLOCK", BLOCK)
    yield BLOCK
    forget_known_limits()  # the limits deploy created live on this test's server only


def _pipeline_automations() -> dict[str, list[Any]]:
    with get_client(sync_client=True) as client:
        found: dict[str, list[Any]] = {}
        for automation in client.read_automations():
            found.setdefault(automation.name, []).append(automation)
    return found


@pytest.mark.slow
def test_deploy_and_serve_make_each_automation_once_and_keep_one_turned_off(
    alert_block: str, real_prefect_api: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("REINSTATE_ALERT_BLOCK")
    bare = invoke("deploy", "--pool", "alerts-test")
    assert bare.exit_code == 0, bare.output
    assert NOT_SET in bare.output.splitlines()  # one line says so
    assert not set(_pipeline_automations()) & set(ALERT_NAMES)

    monkeypatch.setenv("REINSTATE_ALERT_BLOCK", alert_block)
    first = invoke("deploy", "--pool", "alerts-test")
    assert first.exit_code == 0, first.output
    assert f"alerts: 3 automations notify through {BLOCK} (3 created)" in first.output
    made = _pipeline_automations()
    assert all(len(made[name]) == 1 for name in ALERT_NAMES), made
    with get_client(sync_client=True) as client:
        client.pause_automation(made[ALERT_NIGHTLY_OVERDUE][0].id)
        nightly = client.read_deployment_by_name("nightly-reconciliation/nightly-reconciliation")
        block_id = client.read_block_document_by_name("ops-alerts", "custom-webhook").id

    again = invoke("deploy", "--pool", "alerts-test")
    assert again.exit_code == 0, again.output
    assert f"alerts: 3 automations notify through {BLOCK} (3 updated)" in again.output

    # `serve` registers the same deployments from its own process, and the same alerts.
    env = {**os.environ, "PREFECT_API_URL": real_prefect_api, "REINSTATE_ALERT_BLOCK": BLOCK,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        # --take-over: the deploys above put the deployments on a pool
        served = subprocess.Popen([sys.executable, "-c", "from deployments.serve import main; "
                                   "main(take_over=True)"], env=env,
                                  cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while b"alerts: " not in log.read_bytes():
            assert served.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert f"alerts: 3 automations notify through {BLOCK} (3 updated)" in log.read_text()
        # Taken over, the deployments are no longer on the pool: it goes on serving.
        from deployments.serve import POOL_CHECK_SECONDS

        time.sleep(POOL_CHECK_SECONDS * 2 + 2)
        assert served.poll() is None, log.read_text()
    finally:
        served.terminate()
        served.wait(timeout=30)

    after = _pipeline_automations()
    assert {name: len(after[name]) for name in ALERT_NAMES} == dict.fromkeys(ALERT_NAMES, 1)
    assert [after[name][0].id for name in ALERT_NAMES] == [made[name][0].id
                                                          for name in ALERT_NAMES]
    assert not after[ALERT_NIGHTLY_OVERDUE][0].enabled  # the operator turned it off
    assert after[ALERT_RUN_FAILED][0].enabled and after[ALERT_AWAITING_APPROVAL][0].enabled
    for name in ALERT_NAMES:
        (action,) = after[name][0].actions
        assert action.type == "send-notification" and action.block_document_id == block_id

    failed = after[ALERT_RUN_FAILED][0].trigger
    assert failed.posture == "Reactive"
    assert failed.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.match_related.model_dump() == {  # type: ignore[union-attr]
        "prefect.resource.role": "flow", "prefect.resource.name": sorted(
            ["reinstate-incident", "resume-incident", "nightly-reconciliation", "review-case",
             "resend-notices", "incident-step"])}
    waiting = after[ALERT_AWAITING_APPROVAL][0].trigger
    assert (waiting.posture, waiting.within) == ("Proactive", timedelta(hours=24))
    assert waiting.after == {events.AWAITING_APPROVAL}
    assert waiting.expect == {events.APPROVED, events.REJECTED}
    assert waiting.for_each == {"prefect.resource.id"}
    overdue = after[ALERT_NIGHTLY_OVERDUE][0].trigger
    assert (overdue.posture, overdue.within) == ("Proactive", timedelta(hours=26))
    assert overdue.after == overdue.expect == {"prefect.flow-run.Completed"}
    assert overdue.match_related.model_dump() == {  # type: ignore[union-attr]
        "prefect.resource.role": "deployment",
        "prefect.resource.id": f"prefect.deployment.{nightly.id}"}


@pytest.mark.slow
def test_a_failed_run_and_an_incident_left_waiting_reach_the_operators_webhook(
    alert_block: str, receiver: Receiver, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, smtp_server: Any,
) -> None:
    """Deployed with a reminder after 0.005 hours (18 s): a run that fails is told at once;
    an incident left awaiting approval is told once its 18 s have passed, and one approved
    within them is not."""
    monkeypatch.setenv("REINSTATE_ALERT_APPROVAL_HOURS", "0.005")
    resources.forget()
    deployed = invoke("deploy", "--pool", "alerts-test")
    assert deployed.exit_code == 0, deployed.output
    seed(engine, SeedOptions(accounts=100, seed=7))

    # From the command line (a run no deployment made), with a mail server that refuses
    # every notice: the run ends Failed.
    _mail_refusing_everything(monkeypatch, smtp_server)
    failing = _key("failing")
    ran = invoke("run", failing, *[f"--faulty={v}" for v in INCIDENT_FAULTY],
                 f"--since={INCIDENT_SINCE.isoformat()}", f"--until={INCIDENT_UNTIL.isoformat()}")
    assert ran.exit_code == 1 and "failed for good (554" in ran.output, ran.output
    told = receiver.wait_for(lambda m: f"{failing}: restore" in m["subject"])
    assert told["subject"] == f"reinstatement: run {failing}: restore Failed"
    assert "notices failed for good (554" in told["body"]
    assert f"Tags: {failing}, reinstatement" in told["body"]
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "file")
    resources.forget()

    waiting, decided = _key("waiting"), _key("decided")
    reinstate_incident(incident_request(incident_key=waiting, require_approval=True))
    events.emit_incident(events.AWAITING_APPROVAL, decided, {})
    events.emit_incident(events.APPROVED, decided, {})
    reminded = receiver.wait_for(lambda m: waiting in m["subject"], timeout=90)
    assert reminded["subject"] == f"reinstatement: incident {waiting} awaits approval"
    assert f"reinstate plan {waiting}" in reminded["body"]
    time.sleep(15)  # the approved incident's window has ended meanwhile
    assert not [m for m in receiver.received if decided in m["subject"]]
    assert len([m for m in receiver.received if waiting in m["subject"]]) == 1
    with engine.connect() as conn:
        assert lifecycle.state_by_key(conn, waiting).status == "awaiting_approval"
