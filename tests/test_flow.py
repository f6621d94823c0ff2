"""The reinstate-incident flow through Prefect: end to end, and a run awaiting approval."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import Engine, func, select

from flows.reinstate_incident import reinstate_incident
from reinstatement.models import Case, Incident
from reinstatement.seed import (
    SeedOptions,
    seed,
)
from tests.factories import approve, snapshot
from tests.factories import seeded_incident_request as incident_request

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


def test_a_run_outside_a_deployment_previews_and_ends_awaiting_approval(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    """No process waits for days: a run that is no deployment run ends at the preview."""
    seed(engine, SeedOptions(accounts=200, seed=4))
    before = snapshot(engine)
    report = reinstate_incident(incident_request(require_approval=True))
    assert report["status"] == "awaiting_approval"
    assert "reinstate approve INC-2025-04-spam" in report["status_words"]
    assert snapshot(engine) == before
    assert not list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one() == 0
        assert conn.execute(select(Incident.status)).scalar_one() == "awaiting_approval"
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(limit=1, sort="EXPECTED_START_TIME_DESC")
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

    import tasks  # noqa: F401 - installs the Secret-block resolver, as any flow process does
    from reinstatement import resources

    Secret(value="from-the-block").save("reinstatement-smtp-test", overwrite=True)
    monkeypatch.setenv("REINSTATE_SMTP_PASSWORD", "from-the-environment")
    resources.forget()
    assert resources.resources().smtp_password.get_secret_value() == "from-the-environment"  # type: ignore[union-attr]
    monkeypatch.setenv("REINSTATE_SMTP_PASSWORD_BLOCK", "reinstatement-smtp-test")
    resources.forget()
    password = resources.resources().smtp_password
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
    # The run's log says it once, in plain words, with no traceback.
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 20
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[latest.id])))
        errors = [log.message for log in logs if log.level >= 40]
        if errors or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert errors and message in errors[0], errors
    assert not any("Traceback" in log.message for log in logs), [log.message for log in logs]


def _recorded_progress(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str | None]]:
    import tasks.progress as reporting

    updates: list[tuple[float, str | None]] = []
    real_update = reporting.update_progress_artifact

    def recording_update(artifact_id: Any, progress: float,
                         description: str | None = None) -> Any:
        updates.append((progress, description))
        return real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(reporting, "update_progress_artifact", recording_update)
    return updates


def _paced(monkeypatch: pytest.MonkeyPatch, batch: str, seconds: float = 0.3) -> None:
    """Each batch of `runner.<batch>` takes at least `seconds`. A card's update goes to
    Prefect's server from the card's own thread, with the latest value only: batches that
    end together on a busy machine move the card once."""
    from reinstatement import runner

    real = getattr(runner, batch)

    def paced(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, batch, paced)


def test_progress_moves_per_batch_and_says_done_of_total(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An approved incident's restore step: its total is known from the start."""
    from reinstatement.resources import resources

    seed(engine, SeedOptions(accounts=300, seed=6))
    request = incident_request(batch_size=20, require_approval=True)
    assert reinstate_incident(request)["status"] == "awaiting_approval"
    approve(resources().engine, request.incident_key)
    updates = _recorded_progress(monkeypatch)
    _paced(monkeypatch, "restore_one_batch")
    report = reinstate_incident(request)
    restore = [(p, d) for p, d in updates if d and d.startswith("restore:")]
    reinstated = report["outcomes"]["reinstated"]
    assert len(restore) >= 3, restore
    assert [p for p, _ in restore] == sorted(p for p, _ in restore)
    assert any(0 < p < 100 for p, _ in restore), restore  # through intermediate values
    assert restore[-1] == (100.0, f"restore: {reinstated:,} of {reinstated:,} done")


def test_progress_of_verifying_and_restoring_in_one_pass(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without approval, verifying and restoring is one step (settle): its progress says
    cases done of the cases planned, batch by batch."""
    seed(engine, SeedOptions(accounts=300, seed=6))
    updates = _recorded_progress(monkeypatch)
    _paced(monkeypatch, "settle_one_batch")
    report = reinstate_incident(incident_request(batch_size=20))
    settle = [(p, d) for p, d in updates if d and d.startswith("settle:")]
    cases = sum(report["outcomes"].values())
    assert len(settle) >= 3, settle
    assert [p for p, _ in settle] == sorted(p for p, _ in settle)
    assert any(0 < p < 100 for p, _ in settle), settle
    assert settle[-1] == (100.0, f"settle: {cases:,} of {cases:,} done")
    assert not [d for _, d in updates if d and d.startswith(("verify:", "restore:"))]


def test_greylisted_notices_are_sent_again_in_the_same_run_without_stalling(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, smtp_server: Any,
) -> None:
    """Every first attempt refused with 451: the run reschedules each notice instead of
    sleeping on the connection, waits (holding none) until they come due, and sends each
    exactly once."""
    from datetime import timedelta

    import reinstatement.outbox as outbox
    from tests.smtp_server import RecordingHandler

    seed(engine, SeedOptions(accounts=200, seed=8))
    server = smtp_server(RecordingHandler(defer_first_attempt=True))
    monkeypatch.setattr(outbox, "RETRY_BASE", timedelta(seconds=1))
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REINSTATE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("REINSTATE_SMTP_PORT", str(server.port))
    monkeypatch.setenv("REINSTATE_NOTIFY_RETRY_WAIT_SECONDS", "60")
    report = reinstate_incident(incident_request(batch_size=50))
    sent = report["notices"].get("sent", 0)
    assert sent > 20
    assert report["notices"].get("retry", 0) == 0
    assert len(server.handler.delivered_ids) == sent
    assert set(server.handler.delivered_ids.values()) == {1}
    assert set(server.handler.data_attempts.values()) == {2}  # refused once, then sent


def test_sender_processes_pace_by_the_prefect_api_of_their_run(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender process paces by the global mail rate of the server its run talks to,
    also when that server's address is not in the environment (a test server, or the
    temporary server of a local run): otherwise each child would start a temporary
    server of its own, which on a busy machine does not come up in time."""
    import os

    from tasks import limits, senders

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("REINSTATE_DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    try:
        seen = senders.pool(1, None, limits.mail_rate).submit(
            os.getenv, "PREFECT_API_URL").result(timeout=120)
    finally:
        senders.shutdown()
    assert seen == prefect_api


def test_notices_can_be_sent_from_sender_processes(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REINSTATE_SENDER_PROCESSES: each sending slot sends from a child process of its
    own; every notice is written once, and none by the flow's own process."""
    import os

    import reinstatement.outbox as outbox
    from tasks import senders

    seed(engine, SeedOptions(accounts=300, seed=9))
    monkeypatch.setenv("REINSTATE_SENDER_PROCESSES", "true")
    monkeypatch.setenv("REINSTATE_SMTP_CONNECTIONS", "2")
    in_this_process = []
    monkeypatch.setattr(outbox, "send_batch", lambda *a, **k: in_this_process.append(a))
    try:
        report = reinstate_incident(incident_request(batch_size=40))
        children = set(senders._pool._processes or {})  # type: ignore[union-attr]
        # This server has no global mail rate: the flow's process read that and told its
        # senders, which asked the server nothing and never imported Prefect's client (1.0
        # to 1.4 s of CPU each, as the notify step starts).
        probes = [senders._pool.submit(  # type: ignore[union-attr]
            eval, "(__import__('time').sleep(0.3), __import__('os').getpid(),"
                  " sorted(m for m in __import__('sys').modules if m.startswith('prefect')))")
                  for _ in range(4)]
        imported = {pid: modules for _, pid, modules in (p.result(timeout=60) for p in probes)}
    finally:
        senders.shutdown()
    sent = report["notices"].get("sent", 0)
    assert sent > 30 and report["notices"].get("pending", 0) == 0
    assert in_this_process == []
    assert len(children) == 2 and os.getpid() not in children
    assert set(imported) <= children and imported and all(
        modules == [] for modules in imported.values()), imported
    eml = list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    assert len(eml) == sent


def test_a_run_reads_its_settings_once(prefect_api: str, engine: Engine,
                                        cli_env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows, tasks, notices and reports take the process's one resources object: a whole
    run, planning to notices and its report, parses the settings once."""
    from reinstatement import resources, settings

    seed(engine, SeedOptions(accounts=200, seed=5))
    parsed: list[int] = []
    real = settings.Settings.__init__

    def counting(self: settings.Settings, *args: Any, **kwargs: Any) -> None:
        parsed.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(settings.Settings, "__init__", counting)
    resources.forget()
    report = reinstate_incident(incident_request())
    assert report["status"] == "completed" and report["notices"].get("sent", 0) > 0
    assert len(parsed) == 1
