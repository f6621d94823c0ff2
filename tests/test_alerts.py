"""Events as an operator's automations meet them: the incident's milestones are Prefect
events, read back from the server the runs talk to."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner, Result

from commands.reinstate import app
from flows.reinstate_incident import reinstate_incident
from flows.run_state import NoticesFailed
from reinstatement import audit, resources
from reinstatement.lifecycle import IncidentStatus
from reinstatement.models import Case, Incident
from reinstatement.platform_schema import accounts
from reinstatement.seed import SeedOptions, seed
from tasks import events
from tests.factories import APPROVER
from tests.factories import seeded_incident_request as incident_request
from tests.smtp_server import RecordingHandler

pytestmark = pytest.mark.prefect


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
    server = smtp_server(RecordingHandler(refuse_every_message=True))
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REINSTATE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("REINSTATE_SMTP_PORT", str(server.port))
    resources.forget()
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
