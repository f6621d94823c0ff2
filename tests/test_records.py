"""`reinstate incidents` and `reinstate audit KEY`: what they list agrees with the
database, and both are published as artifacts."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from commands.reinstate import app
from flows.reinstate_incident import reinstate_incident
from reinstatement.models import AuditEntry, Case, Incident, Notice, Run
from reinstatement.seed import SeedOptions, seed
from tests.factories import seeded_incident_request as incident_request
from tests.test_detection import latest_artifact

pytestmark = pytest.mark.prefect
KEY = "INC-2025-04-spam"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_incidents_and_audit_agree_with_the_database(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
) -> None:
    seed(engine, SeedOptions(accounts=150, seed=6))
    reinstate_incident(incident_request(dry_run=True))
    reinstate_incident(incident_request())
    reinstate_incident(incident_request(incident_key="INC-WAITING", require_approval=True))

    code, output = invoke("incidents", "--json")
    assert code == 0, output
    rows = {row["incident"]: row for row in map(json.loads, output.splitlines())}
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(Incident.key, Incident.status)).all())
        for key in statuses:
            incident_id = conn.execute(select(Incident.id).where(Incident.key == key)
                                       ).scalar_one()
            assert rows[key]["cases"] == conn.execute(select(func.count()).select_from(Case)
                                                      .where(Case.incident_id == incident_id)
                                                      ).scalar_one()
            assert rows[key]["reinstated"] == conn.execute(
                select(func.count()).select_from(Case).where(
                    Case.incident_id == incident_id, Case.outcome == "reinstated",
                    Case.state != "previewed")).scalar_one()
            assert rows[key]["notices_sent"] == conn.execute(
                select(func.count()).select_from(Notice).where(
                    Notice.incident_id == incident_id, Notice.state == "sent")).scalar_one()
            last = conn.execute(select(Run.status).where(Run.incident_id == incident_id,
                                                         Run.parent_run_id.is_(None))
                                .order_by(Run.id.desc())).scalars().first()
            assert rows[key]["last_run"] == last
    assert {key: row["status"] for key, row in rows.items()} == statuses
    assert statuses == {KEY: "completed", "INC-WAITING": "awaiting_approval"}
    assert list(rows) == ["INC-WAITING", KEY]  # newest first

    code, output = invoke("incidents", "--status", "awaiting_approval")
    assert code == 0 and "INC-WAITING" in output and KEY not in output
    assert "reinstate approve INC-WAITING" in output
    code, output = invoke("incidents", "--status", "rejected")
    assert code == 0 and output.strip() == "no incidents in status rejected"

    code, output = invoke("audit", KEY, "--json")
    assert code == 0, output
    entries = [json.loads(line) for line in output.splitlines()]
    code, everything = invoke("audit", KEY, "--json", "--cases")
    with engine.connect() as conn:
        incident_id = conn.execute(select(Incident.id).where(Incident.key == KEY)).scalar_one()
        own = conn.execute(select(AuditEntry.to_state).where(
            AuditEntry.incident_id == incident_id, AuditEntry.case_id.is_(None))
            .order_by(AuditEntry.id)).scalars().all()
        every = conn.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.incident_id == incident_id)).scalar_one()
    assert [entry["to"] for entry in entries] == own and own[-1] == "completed"
    assert len(everything.splitlines()) == every > len(entries)
    code, output = invoke("audit", KEY)
    assert code == 0 and "-> completed by" in output

    audit_card = latest_artifact(f"audit-inc-2025-04-spam-{_digest(KEY)}")
    assert all(state in audit_card for state in own)


def _digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:10]


def test_the_nightly_publishes_the_list_of_incidents(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
) -> None:
    from flows.reconcile import nightly_reconciliation

    seed(engine, SeedOptions(accounts=60, seed=7))
    reinstate_incident(incident_request(require_approval=True))
    nightly_reconciliation(dry_run=True, detect_days=0)
    card = latest_artifact("incidents")
    assert KEY in card and "awaiting_approval" in card


@pytest.mark.parametrize(("args", "message"), [
    (["incidents", "--status", "done"], "--status: 'done' is not one of"),
    (["audit", "NO-SUCH-INCIDENT"], "NO-SUCH-INCIDENT"),
])
def test_bad_input_is_one_line_and_exit_2(engine: Engine, cli_env: dict[str, str],
                                          args: list[str], message: str) -> None:
    seed(engine, SeedOptions(accounts=20, seed=1))
    code, output = invoke(*args)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1


def test_the_preview_says_what_the_restore_then_does(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
) -> None:
    """The dry run's preview says how many notices would go out and how many pins come
    back; the real run then sends and restores exactly those; each outcome is explained."""
    import re

    from reinstatement.lifecycle import state_by_key
    from tasks.reporting import preview_key

    seed(engine, SeedOptions(accounts=300, seed=9))
    reinstate_incident(incident_request(dry_run=True))
    with engine.connect() as conn:
        plan = state_by_key(conn, KEY).plan
    assert plan is not None
    preview = latest_artifact(preview_key(KEY, plan.short))
    notices = int(re.search(r"send ([\d,]+) notices", preview).group(1).replace(",", ""))
    pins_back = int(re.search(r"bring back ([\d,]+) pins", preview).group(1).replace(",", ""))
    for outcome in ("reinstated", "needs_review", "skipped", "upheld", "kept_other_ban"):
        assert f"- **{outcome}**: " in preview
    report = reinstate_incident(incident_request())
    assert report["notices"].get("sent", 0) == notices > 0
    assert report["pins_restored"] == pins_back > 0
