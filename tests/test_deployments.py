"""The deployments as an operator meets them: served, triggered through Prefect's API, approved.

A child process runs `python -m deployments.serve` against the session's Prefect test
server, exactly as `reinstate serve` does for an operator. The test reads the registered
deployments back (the nightly cron, the parameter forms), starts `reinstate-incident`
through the API with parameters for a seeded database, approves the paused run with the
operator's input, and checks the platform rows and the notices written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from sqlalchemy import Engine, func, select

from deployments.definitions import all_deployments
from flows.reinstate_incident import reinstate_incident
from reinstatement.models import Case
from reinstatement.platform_schema import accounts
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    seed,
)

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_every_flow_and_deployment_loads() -> None:
    names = {d.name for d in all_deployments()}
    assert names == {"reinstate-incident", "nightly-reconciliation", "resume-incident",
                     "review-case"}


def test_incident_form_has_descriptions_bounds_and_approval_on() -> None:
    schema = reinstate_incident.parameters.model_dump()
    request = schema["definitions"]["IncidentRequest"]["properties"]
    assert request["require_approval"]["default"] is True
    assert request["batch_size"]["minimum"] == 1 and request["batch_size"]["maximum"] == 50_000
    for name in ("incident_key", "faulty_versions", "since", "until", "account_ids",
                 "dry_run", "notify", "batch_size", "require_approval"):
        assert request[name].get("description"), name


@pytest.fixture
def served(prefect_api: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING",
           **cli_env}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "deployments.serve"], env=env,
                               cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_deployments(4)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


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
                                          or run.state.name == done):
                return run
            if run.state is not None and run.state.is_final() and done != "final":
                raise AssertionError(f"run ended {run.state.name}: {run.state.message}")
            time.sleep(0.5)
    raise AssertionError(f"the run never reached {done}")


def test_operator_runs_an_incident_from_the_deployment(
    served: None, engine: Engine, cli_env: dict[str, str]
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

    flow_run = run_deployment(
        "reinstate-incident/reinstate-incident",
        parameters={"request": {
            "incident_key": INCIDENT_KEY,
            "faulty_versions": list(INCIDENT_FAULTY),
            "since": INCIDENT_SINCE.isoformat(),
            "until": INCIDENT_UNTIL.isoformat(),
            "batch_size": 100,
        }},
        timeout=0,
    )
    _wait_for_state(flow_run.id, "Paused")
    with engine.connect() as conn:  # previewed, nothing restored yet
        assert conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one() == 0
    resume_flow_run(flow_run.id, run_input={"approve": True, "operator": "ops-oncall",
                                            "note": "preview checked"})
    run = _wait_for_state(flow_run.id, "COMPLETED")
    assert run.state.is_completed()

    with engine.connect() as conn:
        restored = conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one()
        active = conn.execute(select(func.count()).select_from(accounts).where(
            accounts.c.status == "active")).scalar_one()
    assert restored == summary.expected_outcomes["reinstated"]
    assert active == summary.kinds["bystander"] + summary.kinds["appealed"] + restored
    notices = list(Path(cli_env["REINSTATE_EMAIL_DIR"]).glob("*.eml"))
    assert 0 < len(notices) <= restored
