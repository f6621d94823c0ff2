"""`reinstate deploy` and `--child-runs`: bad input is refused with exit status 2 and
nothing is created or changed, on both databases."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner, Result

from commands.reinstate import app
from reinstatement.models import Incident
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    seed,
)
from tasks.limits import DATABASE_BATCHES, MAIL_RATE, SMTP_CONNECTIONS, forget_known_limits
from tests.factories import snapshot

pytestmark = pytest.mark.prefect


@pytest.fixture(autouse=True)
def _leave_the_server_as_found(prefect_api: str):  # type: ignore[no-untyped-def]
    """The session's Prefect test server is shared with other modules: take away the
    limits, deployments and pools a test here registered."""
    yield
    with get_client(sync_client=True) as client:
        for name in (DATABASE_BATCHES, SMTP_CONNECTIONS, MAIL_RATE):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass
        for deployment in client.read_deployments():
            if deployment.work_pool_name == "deploy-test":
                client.delete_deployment(deployment.id)
        try:
            client.delete_work_pool("deploy-test")
        except ObjectNotFound:
            pass
    forget_known_limits()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _pool_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            return False
    return True


@pytest.mark.parametrize(("args", "words"), [
    (["--pool", "a/b"], "not a work pool name"),
    (["--pool", "deploy-test-image", "--image", "registry.example/r:1"], "process pool"),
    (["--pool", "deploy-test-image", "--image", " "], "--image"),
    (["--pool", "deploy-test-image", "--database-batches", "0"], "database-batches"),
    (["--pool", "deploy-test-image", "--mail-rate", "-1"], "mail-rate"),
])
def test_deploy_refuses_bad_input_and_creates_nothing(
    prefect_api: str, args: list[str], words: str
) -> None:
    result = invoke("deploy", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not _pool_exists("deploy-test-image")


def test_deploy_needs_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = invoke("deploy", "--pool", "anywhere")
    assert result.exit_code == 2
    assert "PREFECT_API_URL is not set" in result.output


def test_deploy_creates_the_pool_the_limits_and_keeps_tuned_values(prefect_api: str) -> None:
    result = invoke("deploy", "--pool", "deploy-test", "--smtp-connections", "3")
    assert result.exit_code == 0, result.output
    assert "reinstatement-smtp-connections: 3 at once" in result.output
    assert "incident-step/incident-step" in result.output
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("deploy-test").type == "process"
        step = client.read_deployment_by_name("incident-step/incident-step")
        assert step.work_pool_name == "deploy-test"
        assert step.entrypoint == "flows.incident_step.incident_step"
        client.upsert_global_concurrency_limit_by_name(DATABASE_BATCHES, 7)
    again = invoke("deploy", "--pool", "deploy-test")  # no values given: the server's stay
    assert again.exit_code == 0, again.output
    assert f"{DATABASE_BATCHES}: 7 at once" in again.output
    assert "reinstatement-smtp-connections: 3 at once" in again.output


def test_child_runs_without_the_step_deployment_are_refused_and_change_nothing(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.delete_deployment(
                client.read_deployment_by_name("incident-step/incident-step").id)
        except ObjectNotFound:
            pass
    seed(engine, SeedOptions(accounts=50, seed=2))
    before = snapshot(engine)
    result = invoke("run", INCIDENT_KEY,
                    *[a for name in INCIDENT_FAULTY for a in ("--faulty", name)],
                    "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat(),
                    "--child-runs", "2")
    assert result.exit_code == 2, result.output
    assert "incident-step/incident-step" in result.output
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Incident)).scalar_one() == 0
