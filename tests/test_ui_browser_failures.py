"""What an operator sees in Prefect's UI when things do not go to plan, in headless Chromium.

A real `prefect server start` and `reinstate serve` in child processes, a mail server that
refuses every message, and a browser doing what the guide's "When something fails" says:

1. ⋮ → Cancel on a run that waits for approval: the run is Cancelled, and the incident's
   report (its artifact page) says the plan still awaits approval and that no run waits
   for it in the UI any more.
2. The incident's deployment started again, ⋮ → Resume with "reject": the run's page says
   Rejected (not a crash: no ERROR line, no traceback), and the report opens REJECTED with
   what would have been reinstated.
3. An incident whose every notice the mail server refuses: its run's page says Failed with
   the count and the reason; once the mail server takes them, the resend-notices
   deployment's form sends each one exactly once, and its run is Completed.

Screenshots go to REINSTATE_SCREENSHOTS_DIR (docs/ui/ with `make ui-screenshots`), else to
the test's tmp_path. Without Chromium or Playwright the test skips (fails under CI=true).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from reinstatement.models import Case, Notice, Run
from reinstatement.seed import INCIDENT_KEY, SeedOptions, seed
from tasks.artifacts import artifact_key
from tests.smtp_server import RecordingHandler
from tests.test_deployments import Server, _incident_parameters, _run_log_records, _wait_for_state
from tests.test_ui_browser import (
    UI_TIMEOUT_MS,
    _artifacts,
    _deployment_runs,
    _require_browser,
    _resume_until_taken,
    _wait_for_new_run,
    fill_decision,
    operator_browser,
    submit_until_created,
)

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

SECOND_KEY = "INC-2025-04-spam-mail"
WAITING_WORDS = "no run waits for it in the Prefect UI"


@pytest.fixture
def chromium() -> str:
    return _require_browser()


@pytest.fixture
def refusing_mail(smtp_server: Any) -> Any:
    return smtp_server(RecordingHandler(refuse_every_message=True))


@pytest.fixture
def served(real_prefect_api: str, cli_env: dict[str, str], tmp_path: Path,
           refusing_mail: Any) -> Iterator[Server]:
    env = {**os.environ, "PREFECT_API_URL": real_prefect_api, **cli_env,
           "REINSTATE_EMAIL_BACKEND": "smtp", "REINSTATE_SMTP_HOST": "127.0.0.1",
           "REINSTATE_SMTP_PORT": str(refusing_mail.port),
           "REINSTATE_NOTIFY_RETRY_WAIT_SECONDS": "0"}
    with Server.running(env, tmp_path / "serve.log") as server:
        yield server


def _run_statuses(engine: Engine, key: str) -> list[str]:
    from reinstatement.models import Incident

    with engine.connect() as conn:
        return list(conn.execute(
            select(Run.status).join(Incident, Incident.id == Run.incident_id)
            .where(Incident.key == key, Run.parent_run_id.is_(None)).order_by(Run.id)
        ).scalars())


def _start(parameters: dict[str, Any]) -> Any:
    """A run of the incident deployment, as the form would start it (Playwright's sync API
    holds an event loop in this thread, where `run_deployment` would hand back a
    coroutine: the sync client asks for the run instead)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("reinstate-incident/reinstate-incident")
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def _until(check: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.5)


def test_operator_cancels_rejects_and_resends_in_the_prefect_ui(
    chromium: str, served: Server, prefect_server: str, engine: Engine, shots: Path,
    refusing_mail: Any,
) -> None:
    from playwright.sync_api import Page, expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    seed(engine, SeedOptions(accounts=150, seed=8))
    ui = f"{prefect_server}/v2"

    def shot(page: Page, name: str) -> None:
        page.wait_for_timeout(400)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def open_run_menu(page: Page, flow_run_id: Any) -> None:
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
        page.get_by_role("button", name="Open menu").first.click()

    def latest(key: str) -> str:
        return str(_artifacts(key)[0].data)

    def open_latest_version(page: Page, key: str) -> None:
        page.goto(f"{ui}/artifacts/key/{key}")
        page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
        page.wait_for_url(re.compile(r"/artifacts/artifact/"))

    report_key = artifact_key(INCIDENT_KEY, "report")
    with operator_browser(chromium, shots) as page:
        # 1. Cancel a run that waits for approval, from its menu.
        waiting = _start(_incident_parameters(batch_size=50))
        _wait_for_state(waiting.id, "Suspended", timeout=180)
        open_run_menu(page, waiting.id)
        page.get_by_role("menuitem", name="Cancel").click()
        page.get_by_role("button", name="Cancel Flow Run").click()  # the confirmation
        assert _wait_for_state(waiting.id, "final").state.is_cancelled()
        _until(lambda: _run_statuses(engine, INCIDENT_KEY) == ["cancelled"],
               "the cancelled wait recorded")
        _until(lambda: "no run waits for it in the Prefect UI" in latest(report_key)
               .replace("\\", ""), "the report published again")
        open_latest_version(page, report_key)
        expect(page.get_by_text(re.compile(WAITING_WORDS)).first).to_be_visible()
        expect(page.get_by_role("cell", name="cancelled", exact=True)).to_be_visible()
        shot(page, "20-cancelled-while-waiting")

        # 2. Started again; the operator rejects it in the Resume form.
        again = _start(_incident_parameters(batch_size=50))
        _wait_for_state(again.id, "Suspended", timeout=180)
        open_run_menu(page, again.id)
        page.get_by_role("menuitem", name="Resume").click()
        dialog = fill_decision(page, "reject", "ops-oncall", "the corrected rule is wrong")
        _resume_until_taken(page, dialog, again.id)
        run = _wait_for_state(again.id, "final")
        assert (run.state.type.value, run.state.name) == ("CANCELLED", "Rejected")
        page.goto(f"{ui}/runs/flow-run/{again.id}")
        expect(page.get_by_text("Rejected").first).to_be_visible()
        shot(page, "21-run-rejected")
        time.sleep(3)  # the run's last log lines reach the server after its state
        logs = _run_log_records(again.id)
        assert not [log.message for log in logs
                    if log.level >= 40 or "Traceback" in log.message]
        _until(lambda: latest(report_key).startswith("# REJECTED"), "the REJECTED report")
        open_latest_version(page, report_key)
        expect(page.get_by_text(re.compile(r"REJECTED by ops-oncall")).first).to_be_visible()
        expect(page.get_by_role("columnheader", name=re.compile("would have been"))
               ).to_be_visible()
        shot(page, "22-report-rejected")
        assert _run_statuses(engine, INCIDENT_KEY) == ["cancelled", "resumed", "rejected"]

        # 3. Every notice refused for good: the run is Failed and says why.
        failing = _start({"request": {
                                     **_incident_parameters()["request"],
                                     "incident_key": SECOND_KEY,
                                     "require_approval": False}})
        run = _wait_for_state(failing.id, "final", timeout=240)
        assert run.state.is_failed(), run.state
        assert "failed for good" in run.state.message and "554" in run.state.message
        page.goto(f"{ui}/runs/flow-run/{failing.id}")
        expect(page.get_by_text("Failed").first).to_be_visible()
        page.get_by_text("Oldest to newest").click()  # the Logs tab, newest first
        page.get_by_role("option", name="Newest to oldest").click()
        expect(page.get_by_text(re.compile(r"notices? failed for good")).first
               ).to_be_visible()
        shot(page, "23-run-failed-notices")
        with engine.connect() as conn:
            failed = conn.execute(select(func.count()).select_from(Notice).where(
                Notice.state == "failed")).scalar_one()
            restored = conn.execute(select(func.count()).select_from(Case).where(
                Case.state == "restored")).scalar_one()
        assert failed > 0 and restored > 0
        assert not refusing_mail.handler.delivered

        # The mail server takes them now; the resend-notices form sends each once.
        refusing_mail.handler.refuse_every_message = False
        resends_before = {r.id for r in _deployment_runs("resend-notices/resend-notices")}
        page.goto(f"{ui}/deployments")
        page.get_by_role("link", name="resend-notices", exact=True).first.click()
        page.wait_for_url(re.compile(r"/deployments/deployment/"))
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        page.get_by_label("incident_key", exact=True).fill(SECOND_KEY)
        shot(page, "24-resend-form")
        submit_until_created(page)  # as an operator does: Submit until the run is made
        resend = _wait_for_new_run("resend-notices/resend-notices", resends_before,
                                   timeout=120)
        resend = _wait_for_state(resend.id, "COMPLETED", timeout=240)
        page.goto(f"{ui}/runs/flow-run/{resend.id}")
        expect(page.get_by_text("Completed").first).to_be_visible()
        shot(page, "25-resend-completed")

    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).select_from(Notice).where(
            Notice.state == "sent")).scalar_one()
        still = conn.execute(select(func.count()).select_from(Notice).where(
            Notice.state == "failed")).scalar_one()
    delivered = refusing_mail.handler.delivered_ids
    assert (sent, still) == (failed, 0)
    assert len(delivered) == failed and set(delivered.values()) == {1}
