"""The deployments as an operator meets them: served, triggered through Prefect's API, approved.

A child process runs `python -m deployments.serve` against the session's Prefect test
server, exactly as `reinstate serve` does for an operator. The test reads the registered
deployments back (the nightly cron, the parameter forms), starts `reinstate-incident`
through the API with parameters for a seeded database, sees the run suspended for approval
(holding no process, surviving a restart of the server that ran it), decides with the
operator's input and checks the platform rows, the notices written and the report.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from sqlalchemy import Engine, func, select

from deployments.definitions import all_deployments
from flows.reinstate_incident import reinstate_incident
from reinstatement.markdown import md
from reinstatement.models import Case, PlanCase
from reinstatement.platform_schema import accounts
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    seed,
)
from tasks.artifacts import artifact_key

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_every_flow_and_deployment_loads() -> None:
    names = {d.name for d in all_deployments()}
    assert names == {"reinstate-incident", "nightly-reconciliation", "resume-incident",
                     "review-case", "resend-notices", "incident-step"}


def test_reconciliation_form_documents_warns_and_bounds(prefect_api: str) -> None:
    from flows.reconcile import nightly_reconciliation

    form = nightly_reconciliation.parameters.model_dump()["properties"]
    assert form["auto_reinstate"]["default"] is False
    assert "WARNING" in form["auto_reinstate"]["description"]
    assert "without an operator's approval" in form["auto_reinstate"]["description"]
    assert form["dry_run"]["description"]
    assert (form["batch_size"]["minimum"], form["batch_size"]["maximum"]) == (1, 50_000)
    with pytest.raises(Exception, match="batch_size"):
        nightly_reconciliation(batch_size=-5)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "Ctrl-C"])
def test_serve_stops_on_sigterm_or_ctrl_c_within_ten_seconds(
    served: Server, stop_signal: signal.Signals
) -> None:
    assert served.process is not None
    started = time.monotonic()
    served.process.send_signal(stop_signal)
    served.process.wait(timeout=10)
    assert time.monotonic() - started < 10


_SWALLOWS_CTRL_C = """
import signal, sys, time
from deployments.serve import stop_on_ctrl_c
stop_on_ctrl_c()
print("ready", flush=True)
while True:  # as Prefect's import or exit handlers could: the interrupt goes nowhere
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        pass
"""


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_ends_serve_within_ten_seconds_wherever_it_lands(inherited: str) -> None:
    """`reinstate serve` arms Ctrl-C before it imports Prefect: from then on a Ctrl-C ends
    the process within STOP_SECONDS even when it lands where it is swallowed or where the
    way out hangs (an interrupt during Prefect's import left `serve` running, or hanging on
    exit), and also when the process was started with Ctrl-C ignored, as a shell's
    background job is."""
    def ignore_ctrl_c() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [sys.executable, "-c", _SWALLOWS_CTRL_C], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
        preexec_fn=ignore_ctrl_c if inherited == "ignored" else None)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_incident_form_has_descriptions_bounds_and_approval_on() -> None:
    schema = reinstate_incident.parameters.model_dump()
    request = schema["definitions"]["IncidentRequest"]["properties"]
    assert request["require_approval"]["default"] is True
    assert request["batch_size"]["minimum"] == 1 and request["batch_size"]["maximum"] == 50_000
    for name in ("incident_key", "faulty_versions", "since", "until", "account_ids",
                 "dry_run", "notify", "batch_size", "child_runs", "require_approval"):
        assert request[name].get("description"), name


class Server:
    """`reinstate serve` in a child process, as an operator runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            # --take-over: an earlier test on this worker's Prefect server may have left
            # the deployments on a pool (the refusal itself: tests/test_work_pool.py)
            self.process = subprocess.Popen([sys.executable, "-m", "commands.reinstate", "serve",
                                             "--take-over"],
                                            env=self.env, cwd=PROJECT_ROOT, stdout=out,
                                            stderr=subprocess.STDOUT)
        self._wait_until_serving()
        _wait_for_deployments(len(all_deployments()))

    def _wait_until_serving(self, timeout: float = 120) -> None:
        """Until it says it serves: its signal handlers are in place from then on. (The
        deployments a previous `serve` registered are there before this one even started:
        a signal sent on their word alone reached a process still importing, which under
        a pytest worker ignores Ctrl-C.)"""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"serving " in self.log.read_bytes():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError(f"serve did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """Gone at once, as when its machine restarts; nothing it ran survives it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    @classmethod
    @contextmanager
    def running(cls, env: dict[str, str], log: Path) -> Iterator[Server]:
        """`reinstate serve` for the length of a `with` block."""
        server = cls(env, log)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def served(prefect_api: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING",
           **cli_env}
    try:
        with Server.running(env, tmp_path / "serve.log") as server:
            yield server
    finally:
        _remove_global_limits()


def _remove_global_limits() -> None:
    """`serve` creates the global limits; the session's other tests run without them."""
    from prefect.exceptions import ObjectNotFound

    from tasks.limits import DATABASE_BATCHES, MAIL_RATE, SMTP_CONNECTIONS, forget_known_limits

    with get_client(sync_client=True) as client:
        for name in (DATABASE_BATCHES, MAIL_RATE, SMTP_CONNECTIONS):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass
    forget_known_limits()


def _wait_for_deployments(count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if len(client.read_deployments()) >= count:
                return
            time.sleep(0.5)
    raise AssertionError("the deployments were not registered")


def _wait_for_state(flow_run_id: Any, done: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and (run.state.type.value == done
                                          or run.state.name == done
                                          or (done == "final" and run.state.is_final())):
                return run
            if run.state is not None and run.state.is_final() and done != "final":
                raise AssertionError(f"run ended {run.state.name}: {run.state.message}")
            time.sleep(0.5)
    raise AssertionError(f"the run never reached {done}")


DECLARER = "dev-declarer"  # who declares the incidents in the UI; ops-oncall approves


def _start_incident(batch_size: int = 100) -> Any:
    return run_deployment(
        "reinstate-incident/reinstate-incident",
        parameters={"request": {
            "incident_key": INCIDENT_KEY,
            "faulty_versions": list(INCIDENT_FAULTY),
            "since": INCIDENT_SINCE.isoformat(),
            "until": INCIDENT_UNTIL.isoformat(),
            "batch_size": batch_size,
            "declared_by": DECLARER,
        }},
        timeout=0,
    )


def _restored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one())


def _latest_artifact(key: str) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
    return artifact


def _report_markdown() -> str:
    return str(_latest_artifact(artifact_key(INCIDENT_KEY, "report")).data)


def test_operator_runs_an_incident_from_the_deployment(
    served: Server, engine: Engine, cli_env: dict[str, str]
) -> None:
    summary = seed(engine, SeedOptions(accounts=300, seed=8))
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-reconciliation/nightly-reconciliation")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert [s.schedule.timezone for s in nightly.schedules] == ["UTC"]
        incident = client.read_deployment_by_name("reinstate-incident/reinstate-incident")
        assert incident.schedules == []
        form = incident.parameter_openapi_schema
        assert form["required"] == ["request"]
        fields = form["definitions"]["IncidentRequest"]["properties"]
        assert fields["require_approval"]["default"] is True

    flow_run = _start_incident()
    # Suspended, not paused: the run's process has ended and holds nothing while it waits.
    _wait_for_state(flow_run.id, "Suspended")
    assert _restored(engine) == 0  # previewed, nothing restored yet

    # The server that ran it goes away and comes back, as after a restart.
    served.kill()
    served.start()

    # The approval form has no defaults: an untouched or partial form is refused.
    for partial in ({}, {"operator": "ops-oncall", "note": "preview checked"},
                    {"decision": "approve", "operator": "ops-oncall"},
                    {"decision": "maybe", "operator": "ops-oncall", "note": "x"}):
        with pytest.raises(RuntimeError, match="Validation failed"):
            resume_flow_run(flow_run.id, run_input=partial)
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run.id).state.name == "Suspended", partial
    assert _restored(engine) == 0

    resume_flow_run(flow_run.id, run_input={
        "decision": "approve", "operator": "ops-oncall", "note": "preview checked"})
    run = _wait_for_state(flow_run.id, "COMPLETED")
    assert run.state.is_completed()
    # Named for its work and tagged with its incident, for the UI's run lists.
    assert run.name == f"{INCIDENT_KEY}: restore"
    assert INCIDENT_KEY in run.tags

    restored = _restored(engine)
    with engine.connect() as conn:
        active = conn.execute(select(func.count()).select_from(accounts).where(
            accounts.c.status == "active")).scalar_one()
    assert restored == summary.expected_outcomes["reinstated"]
    assert active == summary.kinds["bystander"] + summary.kinds["appealed"] + restored
    notices = list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    assert 0 < len(notices) <= restored
    report = _report_markdown()
    assert f"approved by {md('ops-oncall (the Prefect UI)')} at " in report
    assert f"Declared by {md(DECLARER + ' (the Prefect UI)')}" in report
    # Run again from the top after the Resume, the run still shows its preview once.
    # (A step's progress card can show twice: a step the resumed run finds done.)
    from collections import Counter

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))
    shown = Counter(str(card.key) for card in cards)
    assert sum(n for key, n in shown.items() if key.startswith("preview-plan-")) == 1, shown
    assert [key for key, n in shown.items() if n > 1 and not key.startswith("progress-")
            ] == [], shown


def test_the_ui_approves_exactly_the_plan_it_previewed(
    served: Server, engine: Engine, cli_env: dict[str, str]
) -> None:
    """A faulty ban appears while the run waits; the operator resumes with "approve". The
    resumed run finds the new candidate, so the plan the operator decided on is superseded:
    nothing is restored under it, the run waits again, for the new plan that holds the new
    account; approving that one restores everything. And the declarer's own approval is a
    plain failure."""
    from reinstatement.lifecycle import state_by_key
    from tests.factories import wrongly_banned_now

    seed(engine, SeedOptions(accounts=150, seed=8))
    flow_run = _start_incident()
    _wait_for_state(flow_run.id, "Suspended")
    with engine.connect() as conn:
        first = state_by_key(conn, INCIDENT_KEY).plan
    assert first is not None and first.decision is None
    newcomer = wrongly_banned_now(engine)
    before = _restored(engine)
    resume_flow_run(flow_run.id, run_input={
        "decision": "approve", "operator": "ops-oncall", "note": "preview checked"})
    _wait_for_state(flow_run.id, "Suspended")
    time.sleep(2)  # it stays suspended: nothing more happens under the first decision
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.name == "Suspended"
    with engine.connect() as conn:
        waiting = state_by_key(conn, INCIDENT_KEY)
        status = conn.execute(select(accounts.c.status).where(accounts.c.id == newcomer)
                              ).scalar_one()
        held = conn.execute(select(PlanCase.verdict).join(Case, Case.id == PlanCase.case_id)
                            .where(PlanCase.plan_id == waiting.plan.id,
                                   Case.account_id == newcomer)).scalar_one()
    assert waiting.status == "awaiting_approval" and waiting.plan.id != first.id
    assert (status, held, _restored(engine)) == ("banned", "reinstated", before)
    assert waiting.plan.decision is None  # the decision on the first plan went nowhere

    resume_flow_run(flow_run.id, run_input={
        "decision": "approve", "operator": DECLARER, "note": "my own"})
    run = _wait_for_state(flow_run.id, "final")
    assert run.state.is_failed() and "may not approve it" in run.state.message, run.state
    logs = _run_logs(flow_run.id, until_seen=run.state.message)
    assert not any("Traceback" in line for line in logs), logs
    assert _restored(engine) == before

    again = _start_incident()  # the same declaration, a new run of it
    _wait_for_state(again.id, "Suspended")
    resume_flow_run(again.id, run_input={
        "decision": "approve", "operator": "ops-oncall", "note": "new plan checked"})
    _wait_for_state(again.id, "COMPLETED")
    with engine.connect() as conn:
        assert conn.execute(select(accounts.c.status).where(accounts.c.id == newcomer)
                            ).scalar_one() == "active"
    assert _restored(engine) > before


def test_a_rejection_in_the_ui_cancels_the_run_and_restores_nothing(
    served: Server, engine: Engine, cli_env: dict[str, str]
) -> None:
    seed(engine, SeedOptions(accounts=120, seed=9))
    flow_run = _start_incident()
    _wait_for_state(flow_run.id, "Suspended")
    # The resume deployment is no way around the operator.
    resumed = run_deployment("resume-incident/resume-incident", timeout=0,
                             parameters={"incident_key": INCIDENT_KEY, "batch_size": 100})
    resumed = _wait_for_state(resumed.id, "final")
    assert resumed.name == f"{INCIDENT_KEY}: resume"
    assert resumed.state.is_failed(), resumed.state
    assert "requires an operator's approval" in resumed.state.message
    assert _restored(engine) == 0
    with pytest.raises(RuntimeError, match="Validation failed"):  # who, and why
        resume_flow_run(flow_run.id, run_input={"decision": "reject"})
    resume_flow_run(flow_run.id, run_input={
        "decision": "reject", "operator": "ops-oncall", "note": "corrected rule is wrong"})
    run = _wait_for_state(flow_run.id, "final")
    assert run.state.type.value == "CANCELLED" and run.state.name == "Rejected", run.state
    assert not run.state.is_completed()
    assert run.state.message == "rejected by ops-oncall: corrected rule is wrong"
    time.sleep(5)  # a run's last log lines reach the server a moment after its state
    logs = _run_log_records(flow_run.id)
    assert not [log.message for log in logs if log.level >= 40 or "Traceback" in log.message]
    assert _restored(engine) == 0
    assert not list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    report = _report_markdown()
    assert report.startswith(f"# REJECTED: Reinstatement report: {md(INCIDENT_KEY)}")
    assert f"## REJECTED by {md('ops-oncall')}" in report
    assert "corrected rule is wrong" in report
    assert "| outcome as judged (would have been; rejected, so nothing was restored) |" in report


def _incident_parameters(**fields: Any) -> dict[str, Any]:
    return {"request": {
        "incident_key": INCIDENT_KEY, "faulty_versions": list(INCIDENT_FAULTY),
        "since": INCIDENT_SINCE.isoformat(), "until": INCIDENT_UNTIL.isoformat(),
        "batch_size": 100, "declared_by": DECLARER, **fields}}


def _run_log_records(flow_run_id: Any, until_seen: str = "", timeout: float = 30
                     ) -> list[Any]:
    """The run's log records (message and level), waiting as `_run_logs` does."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if any(until_seen in log.message for log in logs) or time.monotonic() > deadline:
            return list(logs)
        time.sleep(0.5)


def _run_logs(flow_run_id: Any, until_seen: str = "", timeout: float = 30) -> list[str]:
    """The run's log lines; logs reach the server a moment after the state, so wait up to
    `timeout` for a line holding `until_seen`."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            lines = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
        if any(until_seen in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_bad_input_is_refused_at_the_form_or_fails_at_once_in_plain_words(
    served: Server, engine: Engine
) -> None:
    """Each bad value an operator can type: what the form's schema can express is refused
    before any run exists; the rest fails the run at its start with one plain log line,
    the same text as its state message, no traceback, and nothing changed."""
    seed(engine, SeedOptions(accounts=60, seed=3))
    with get_client(sync_client=True) as client:
        runs_before = len(client.read_flow_runs())
    refused_at_the_form = [
        ("reinstate-incident/reinstate-incident",
         _incident_parameters(incident_key="INC 2025 spam")),
        ("reinstate-incident/reinstate-incident",
         _incident_parameters(faulty_versions=["spam_burst"])),
        ("reinstate-incident/reinstate-incident", _incident_parameters(faulty_versions=[])),
        ("reinstate-incident/reinstate-incident", _incident_parameters(batch_size=0)),
        ("reinstate-incident/reinstate-incident", _incident_parameters(declared_by=" ")),
        ("reinstate-incident/reinstate-incident",
         {"request": {k: v for k, v in _incident_parameters()["request"].items()
                      if k != "declared_by"}}),
        ("nightly-reconciliation/nightly-reconciliation", {"batch_size": -5}),
        ("review-case/review-case", {"case_id": 0, "decision": "reinstate",
                                     "reviewer": "ana", "note": "x"}),
        ("review-case/review-case", {"case_id": 1, "decision": "maybe",
                                     "reviewer": "ana", "note": "x"}),
    ]
    for deployment, parameters in refused_at_the_form:
        with pytest.raises(Exception, match="Validation failed"):
            run_deployment(deployment, parameters=parameters, timeout=0)
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == runs_before  # no run was ever created

    fails_at_once = [
        (_incident_parameters(since=INCIDENT_UNTIL.isoformat(),
                              until=INCIDENT_SINCE.isoformat()),
         "before it starts"),
        (_incident_parameters(faulty_versions=["spam_burst@99"]), "spam_burst@99"),
        (_incident_parameters(faulty_versions=["harassment@4"]),
         "harassment@4 is not marked faulty by the platform (its status is 'active')"),
    ]
    for parameters, words in fails_at_once:
        flow_run = run_deployment("reinstate-incident/reinstate-incident",
                                  parameters=parameters, timeout=0)
        run = _wait_for_state(flow_run.id, "final")
        assert run.state.is_failed(), run.state
        assert words in run.state.message
        logs = _run_logs(flow_run.id, until_seen=run.state.message)
        assert not any("Traceback" in line for line in logs), logs
        assert any(run.state.message in line for line in logs), (run.state.message, logs)
    assert _restored(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Case)).scalar_one() == 0


def test_review_in_the_ui_lists_the_cases_and_refreshes_the_report(
    served: Server, engine: Engine
) -> None:
    """The incident's review list lists the cases waiting (id, account, reason); a
    decision through the review-case deployment takes the case off it and moves the
    report's counts."""
    from tasks.review_list import review_page_key

    seed(engine, SeedOptions(accounts=200, seed=8))
    flow_run = run_deployment("reinstate-incident/reinstate-incident", timeout=0,
                              parameters=_incident_parameters(require_approval=False))
    _wait_for_state(flow_run.id, "COMPLETED")

    def review_table() -> list[dict[str, Any]]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        from tests.test_run_artifacts import review_rows

        with get_client(sync_client=True) as client:
            (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[review_page_key(INCIDENT_KEY, 1)])))
        assert "page 1 of 1:" in str(artifact.description)
        return review_rows(str(artifact.data))

    waiting = review_table()
    with engine.connect() as conn:
        in_review = list(conn.execute(select(Case.id).where(Case.state == "review")
                                      .order_by(Case.id)).scalars())
    assert in_review and [row["case id"] for row in waiting] == in_review
    assert all(row["reason"] and row["account"] for row in waiting)
    reinstated_before = _report_markdown()

    case_id = in_review[0]
    review = run_deployment("review-case/review-case", timeout=0, parameters={
        "case_id": case_id, "decision": "reinstate", "reviewer": "ana",
        "note": "the signal was missing, not high"})
    run = _wait_for_state(review.id, "COMPLETED")
    assert run.name == f"review case {case_id} ({INCIDENT_KEY})"
    assert INCIDENT_KEY in run.tags
    assert [row["case id"] for row in review_table()] == in_review[1:]
    assert _report_markdown() != reinstated_before

    refused = run_deployment("review-case/review-case", timeout=0, parameters={
        "case_id": case_id, "decision": "uphold", "reviewer": "ana", "note": "again"})
    run = _wait_for_state(refused.id, "final")
    assert run.state.is_failed() and "not waiting for review" in run.state.message
    logs = _run_logs(refused.id, until_seen=run.state.message)
    assert any(run.state.message in line for line in logs), logs
    assert not any("Traceback" in line for line in logs), logs


def test_serve_stops_within_ten_seconds_even_when_the_prefect_server_is_gone(
    real_prefect_api: str, prefect_server: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Prefect's own shutdown keeps retrying a server that no longer answers; `reinstate
    serve` ends all the same, within its stop deadline, on SIGTERM and on Ctrl-C."""
    from tests.prefect_server import PROCESSES

    env = {**os.environ, "PREFECT_API_URL": real_prefect_api,
           "PREFECT_LOGGING_LEVEL": "WARNING", **cli_env}
    servers = []
    for name in ("sigterm", "ctrl-c"):
        server = Server(env, tmp_path / f"serve-{name}.log")
        server.start()
        servers.append(server)
    PROCESSES[prefect_server].kill()  # the Prefect server is gone
    PROCESSES[prefect_server].wait(timeout=30)
    try:
        for server, stop_signal in zip(servers, (signal.SIGTERM, signal.SIGINT), strict=True):
            assert server.process is not None
            started = time.monotonic()
            if server.process.poll() is None:  # (it may also have given up by itself)
                server.process.send_signal(stop_signal)
            server.process.wait(timeout=15)
            assert time.monotonic() - started < 10, stop_signal
    finally:
        for server in servers:
            server.kill()


def _nightly(client: Any) -> Any:
    return client.read_deployment_by_name("nightly-reconciliation/nightly-reconciliation")


def test_the_nightly_schedule_stays_as_the_operator_left_it(
    served: Server, tmp_path: Path,
) -> None:
    """Stopping `reinstate serve` (SIGTERM or Ctrl-C) leaves the nightly on; a schedule an operator
    turned off, or a deployment paused, stays so when `serve` registers them again."""
    def stop(how: signal.Signals) -> None:
        assert served.process is not None
        served.process.send_signal(how)
        served.process.wait(timeout=30)

    def start(log: str) -> None:
        again = Server(served.env, tmp_path / log)
        again.start()
        served.process = again.process

    with get_client(sync_client=True) as client:
        nightly = _nightly(client)
        assert [(s.slug, s.active) for s in nightly.schedules] == [("nightly", True)]
    # Ctrl-C ends Prefect's runner cleanly, where it would pause its deployments' schedules.
    stop(signal.SIGINT)
    with get_client(sync_client=True) as client:
        nightly = _nightly(client)
        assert not nightly.paused, (tmp_path / "serve.log").read_text()[-2000:]
        assert [(s.slug, s.active) for s in nightly.schedules] == [("nightly", True)]
        client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=False)
    try:
        start("serve-2.log")
        with get_client(sync_client=True) as client:
            nightly = _nightly(client)
            assert [(s.slug, s.active) for s in nightly.schedules] == [("nightly", False)]
            client.pause_deployment(nightly.id)
        stop(signal.SIGTERM)  # as systemd stops it
        start("serve-3.log")
        with get_client(sync_client=True) as client:
            assert _nightly(client).paused
    finally:
        with get_client(sync_client=True) as client:
            nightly = _nightly(client)
            client.resume_deployment(nightly.id)
            client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=True)


def test_serve_creates_the_global_limits_its_runs_take(served: Server, tmp_path: Path) -> None:
    """Where no limit exists, `reinstate serve` creates each with its default, so no run
    warns of a missing limit; a limit an operator set is kept as it is."""
    from tasks.limits import DATABASE_BATCHES, MAIL_RATE, SMTP_CONNECTIONS

    assert served.process is not None
    served.process.send_signal(signal.SIGINT)
    served.process.wait(timeout=30)
    _remove_global_limits()
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(SMTP_CONNECTIONS, 7)
    again = Server(served.env, tmp_path / "serve-2.log")
    again.start()
    served.process = again.process
    with get_client(sync_client=True) as client:
        found = {name: client.read_global_concurrency_limit_by_name(name)
                 for name in (DATABASE_BATCHES, MAIL_RATE, SMTP_CONNECTIONS)}
    assert found[SMTP_CONNECTIONS].limit == 7
    assert found[DATABASE_BATCHES].limit >= 1 and found[MAIL_RATE].slot_decay_per_second > 0


def test_cancelling_a_running_run_records_it_and_publishes_the_report(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], tmp_path: Path,
    smtp_server: Any,
) -> None:
    """Cancel in the UI while notices go out: the run's row says 'cancelled' with its end,
    the report is published again with what the database holds (the notices sent), and
    the notify step's progress card says where it stopped, with that same count."""
    from prefect.states import Cancelling

    from reinstatement.models import Notice, Run
    from tests.smtp_server import RecordingHandler

    seed(engine, SeedOptions(accounts=400, seed=3))
    # Slow enough (about 20 s for the notices) that the cancellation lands mid-step.
    mail = smtp_server(RecordingHandler(slow_data_seconds=0.2))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING",
           **cli_env, "REINSTATE_EMAIL_BACKEND": "smtp", "REINSTATE_SMTP_HOST": "127.0.0.1",
           "REINSTATE_SMTP_PORT": str(mail.port), "REINSTATE_NOTIFY_RETRY_WAIT_SECONDS": "0"}
    server = Server(env, tmp_path / "serve.log")
    server.start()
    try:
        # Batches of 20 notices: the batches sending when the run is cancelled finish
        # (Prefect lets a running task end), and no other starts.
        flow_run = run_deployment("reinstate-incident/reinstate-incident", timeout=0,
                                  parameters=_incident_parameters(require_approval=False,
                                                                  batch_size=20))
        deadline = time.monotonic() + 180
        while len(mail.handler.delivered) < 5:
            assert time.monotonic() < deadline, "no notice went out"
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        run = _wait_for_state(flow_run.id, "final")
        assert run.state.is_cancelled(), run.state
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                row = conn.execute(select(Run.status, Run.finished_at).where(
                    Run.flow_run_id == str(flow_run.id))).one()
                sent = conn.execute(select(func.count()).select_from(Notice).where(
                    Notice.state == "sent")).scalar_one()
            if row.status == "cancelled" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert row.status == "cancelled" and row.finished_at is not None
        assert 0 < sent < 400
        report = _report_markdown()
        assert f"| sent | {sent:,} |" in report
        assert "| cancelled |" in report
        card = _latest_artifact(artifact_key(INCIDENT_KEY, "progress-notify"))
        stopped = re.fullmatch(r"notify: stopped at ([\d,]+) of ([\d,]+) notices handled: "
                               r"the run was cancelled", card.description or "")
        assert stopped and int(stopped[1].replace(",", "")) == sent, card.description
        total = int(stopped[2].replace(",", ""))
        assert sent < total and card.data == pytest.approx(100 * sent / total)
    finally:
        server.stop()
        _remove_global_limits()


def _run_rows(engine: Engine) -> list[tuple[str, bool]]:
    """The incident's top-level runs, oldest first: status and whether a finish is known."""
    from reinstatement.models import Run

    with engine.connect() as conn:
        return [(r.status, r.finished_at is not None) for r in conn.execute(
            select(Run.status, Run.finished_at).where(Run.parent_run_id.is_(None))
            .order_by(Run.id))]


def _preview_markdown(engine: Engine) -> str:
    """The newest version of the preview of the incident's newest plan."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from reinstatement.lifecycle import state_by_key
    from tasks.reporting import preview_key

    with engine.connect() as conn:
        plan = state_by_key(conn, INCIDENT_KEY).plan
    assert plan is not None
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[preview_key(INCIDENT_KEY, plan.short)])))
    return str(artifact.data)


def test_cancelling_a_run_that_waits_for_approval_says_so_and_how_to_go_on(
    served: Server, engine: Engine, cli_env: dict[str, str]
) -> None:
    """⋮ → Cancel on a suspended run runs no code of ours (Prefect's server moves it to
    Cancelled: no process holds it). `serve` finds it within seconds: the run's row says
    'cancelled' with Prefect's time, the incident still awaits approval and says no run
    waits for it in the UI (start the deployment again), and the report and preview say
    so. Started again and approved, every run in the report has its final status and
    finish: cancelled, resumed (the wait the Resume ended), completed."""
    from prefect.states import Cancelling

    seed(engine, SeedOptions(accounts=150, seed=8))
    flow_run = _start_incident()
    _wait_for_state(flow_run.id, "Suspended")
    deadline = time.monotonic() + 30  # its process records its end as it exits
    while _run_rows(engine) != [("waiting", True)]:
        assert time.monotonic() < deadline, _run_rows(engine)
        time.sleep(0.2)
    assert md("Resume the run that waits for it in the Prefect UI") in _preview_markdown(engine)

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelling())
    assert _wait_for_state(flow_run.id, "final").state.is_cancelled()
    deadline = time.monotonic() + 90
    while _run_rows(engine) != [("cancelled", True)]:
        assert time.monotonic() < deadline, _run_rows(engine)
        time.sleep(0.5)
    with engine.connect() as conn:
        from reinstatement.lifecycle import state_by_key

        state = state_by_key(conn, INCIDENT_KEY)
    assert state.status == "awaiting_approval" and not state.run_waits
    words = "no run waits for it in the Prefect UI: start the incident's deployment again"
    assert words in state.describe()
    deadline = time.monotonic() + 30
    while md(words) not in _report_markdown() or md(words) not in _preview_markdown(engine):
        assert time.monotonic() < deadline, _report_markdown()
        time.sleep(0.5)
    assert "| cancelled |" in _report_markdown()
    assert md("Resume the run") not in _preview_markdown(engine)
    done = subprocess.run([sys.executable, "-m", "commands.reinstate", "incidents"],
                          env={**os.environ, **cli_env}, cwd=PROJECT_ROOT,
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and words in done.stdout.decode(), done

    again = _start_incident()
    _wait_for_state(again.id, "Suspended")
    resume_flow_run(again.id, run_input={
        "decision": "approve", "operator": "ops-oncall", "note": "preview checked"})
    _wait_for_state(again.id, "COMPLETED")
    assert _run_rows(engine) == [("cancelled", True), ("resumed", True), ("completed", True)]
    report = _report_markdown()
    assert "| cancelled |" in report and "| resumed |" in report and "| completed |" in report
    assert "| running |" not in report and "| waiting |" not in report
