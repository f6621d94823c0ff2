"""The reinstate-incident flow through Prefect: end to end, approval and rejection."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.flow_runs import resume_flow_run
from sqlalchemy import Engine, func, select

from flows.reinstate_incident import reinstate_incident
from reinstatement.models import Case, Incident
from reinstatement.platform_schema import accounts
from reinstatement.seed import (
    INCIDENT_KEY,
    SeedOptions,
    seed,
)
from tests.factories import seeded_incident_request as incident_request
from tests.factories import snapshot

pytestmark = pytest.mark.prefect


def test_flow_reinstates_a_seeded_incident(prefect_api: str, engine: Engine,
                                           cli_env: dict[str, str]) -> None:
    summary = seed(engine, SeedOptions(accounts=400, seed=3))
    report = reinstate_incident(incident_request())
    outcomes = {k: v for k, v in report["outcomes"].items() if v}
    assert outcomes == dict(summary.expected_outcomes)
    assert report["status"] == "completed"
    eml = list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    assert len(eml) == report["notices"].get("sent", 0) > 0
    assert report["notices"].get("pending", 0) == 0

    # Running the same key again changes nothing and sends nothing.
    before = snapshot(engine)
    again = reinstate_incident(incident_request())
    assert snapshot(engine) == before
    assert again["outcomes"] == report["outcomes"]
    assert len(list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))) == len(eml)


def _run_in_background(request: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["report"] = reinstate_incident(request)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_paused_run(timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(limit=50):
                if run.state is not None and run.state.is_paused():
                    return run.id
            time.sleep(0.5)
    raise AssertionError("the flow never paused for approval")


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_operator_approves_or_rejects_through_the_api(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], approve: bool
) -> None:
    summary = seed(engine, SeedOptions(accounts=200, seed=4))
    before = snapshot(engine)
    thread, outcome = _run_in_background(incident_request(require_approval=True))
    flow_run_id = _wait_for_paused_run()
    # Paused: verified, previewed, and nothing restored yet.
    assert snapshot(engine) == before
    resume_flow_run(flow_run_id, run_input={
        "approve": approve, "operator": "ops-oncall", "note": "checked the samples"})
    thread.join(timeout=180)
    assert "error" not in outcome, outcome.get("error")
    with engine.connect() as conn:
        incident = conn.execute(select(Incident.approval, Incident.approved_by)
                                .where(Incident.key == INCIDENT_KEY)).one()
        active = conn.execute(select(func.count()).select_from(accounts)
                              .where(accounts.c.status == "active")).scalar_one()
        reinstated_cases = conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one()
    assert incident.approved_by == "ops-oncall"
    if approve:
        assert incident.approval == "approved"
        assert reinstated_cases == summary.expected_outcomes["reinstated"]
        assert active == summary.kinds["bystander"] + summary.kinds["appealed"] + \
            reinstated_cases
    else:
        assert incident.approval == "rejected"
        assert reinstated_cases == 0
        assert snapshot(engine) == before
    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))[0]
        assert run.state is not None and run.state.is_completed()


@pytest.mark.parametrize("connections", [1, 3])
def test_smtp_connections_limit_how_many_batches_send_at_once(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, connections: int,
) -> None:
    import reinstatement.outbox as outbox

    seed(engine, SeedOptions(accounts=300, seed=6))
    monkeypatch.setenv("REINSTATE_SMTP_CONNECTIONS", str(connections))
    real_send_batch = outbox.send_batch
    lock = threading.Lock()
    sending = {"now": 0, "most": 0}

    def counting_send_batch(*args: Any, **kwargs: Any) -> Any:
        with lock:
            sending["now"] += 1
            sending["most"] = max(sending["most"], sending["now"])
        try:
            time.sleep(0.2)  # hold the slot long enough for the others to queue up
            return real_send_batch(*args, **kwargs)
        finally:
            with lock:
                sending["now"] -= 1

    monkeypatch.setattr(outbox, "send_batch", counting_send_batch)
    report = reinstate_incident(incident_request(batch_size=10))
    assert report["notices"].get("sent", 0) > 30
    assert sending["most"] == connections


def test_smtp_password_can_come_from_a_prefect_secret_block(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from reinstatement.settings import load_settings
    from tasks.notify import smtp_password

    Secret(value="from-the-block").save("reinstatement-smtp-test", overwrite=True)
    monkeypatch.setenv("REINSTATE_SMTP_PASSWORD", "from-the-environment")
    settings = load_settings()
    assert smtp_password(settings).get_secret_value() == "from-the-environment"  # type: ignore[union-attr]
    monkeypatch.setenv("REINSTATE_SMTP_PASSWORD_BLOCK", "reinstatement-smtp-test")
    settings = load_settings()
    password = smtp_password(settings)
    assert password is not None and password.get_secret_value() == "from-the-block"
    assert "from-the-block" not in repr(password)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"faulty_versions": ["nosuch@1"]}, "unknown rule version nosuch@1"),
    ({"faulty_versions": ["spam_burst@7=image_hash@3"]}, "version of another rule"),
])
def test_bad_input_from_the_ui_fails_the_run_with_the_same_message(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], overrides: dict[str, Any],
    message: str,
) -> None:
    from reinstatement.errors import BadInput

    seed(engine, SeedOptions(accounts=50, seed=2))
    before = snapshot(engine)
    with pytest.raises(BadInput, match=message):
        reinstate_incident(incident_request(**overrides))
    assert snapshot(engine) == before
    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(limit=1, sort="START_TIME_DESC")[0]
    assert latest.state is not None and latest.state.is_failed()
    assert message in (latest.state.message or "")
