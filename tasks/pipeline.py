"""The reinstatement's batch tasks: thin Prefect wrappers over `reinstatement.runner`.

Every task works on a batch of cases (thousands of accounts), never one account: a task
run costs milliseconds and a row in Prefect's database. Batch tasks are safe to retry
(each batch is one transaction over claimed cases), so Prefect's task retries re-run a
failed batch; caching is off because N identical calls must each claim their own batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import State

from reinstatement import account_lists, approval, planner_statistics, runner
from reinstatement.incident_request import IncidentRequest, read_account_ids
from reinstatement.incident_states import IncidentState
from reinstatement.incidents import RegisteredIncident, registered_parameters
from reinstatement.notices.render import sender_domain
from reinstatement.resources import resources
from reinstatement.retrying import is_transient
from reinstatement.states import PIPELINE_ACTOR
from tasks import limits
from tasks.events import announcing_transitions


def run_actor() -> str:
    """Who the audit trail names for changes made by this run."""
    run_id = flow_run.get_id()
    return f"flow-run:{run_id}" if run_id else PIPELINE_ACTOR


def step_context(incident: RegisteredIncident, batch_size: int,
                 run_id: int | None = None) -> runner.StepContext:
    """The steps' context for one batch: the incident as the run loaded it, this run's actor,
    and the run (reinstatement_runs.id) its batches are recorded under, if any."""
    settings = resources().settings
    return runner.StepContext(
        engine=resources().engine,
        incident=incident,
        batch_size=batch_size,
        actor=run_actor(),
        sender_domain=sender_domain(settings.email_from),
        run_id=run_id,
    )


def retry_transient_only(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry a batch only when it failed for a reason that may pass (not bad data)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - inspecting the failure is the point
        return is_transient(exc) or isinstance(exc, (ConnectionError, TimeoutError))
    return False


BATCH_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient_only,
    "cache_policy": NO_CACHE,
}


@task(name="register-incident", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_only)
def register_incident(request: IncidentRequest) -> RegisteredIncident:
    """Register the incident under its key (or check a rerun asks for the same thing).

    Who declares a new incident: in a deployment run (the Prefect UI, or the API), the
    name its form gives; otherwise whoever runs this process (`approval.process_identity`).
    """
    engine = resources().engine
    if request.accounts_file is not None:
        # Read where the run runs, staged in the database; the run then names the list.
        ids = read_account_ids(Path(request.accounts_file))
        reference = account_lists.stage(engine, ids)
        request = request.model_copy(update={"accounts_file": None,
                                              "account_list": str(reference)})
    declarer = None
    if deployment.get_id() is not None:
        with engine.connect() as conn:
            new = registered_parameters(conn, request.incident_key) is None
        if new:
            declarer = approval.ui_identity(request.declared_by, "declared_by")
    with announcing_transitions(actor=run_actor()):
        incident = runner.register(engine, request, run_actor(), declarer)
    get_run_logger().info("incident %s: %d faulty version(s)", incident.key,
                          len(incident.rules.faulty))
    return incident


@task(name="make-plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_only)
def make_plan(incident: RegisteredIncident, dry_run: bool) -> IncidentState:
    """The plan of the incident's cases as judged now (the newest plan when nothing
    changed), and the incident's status after it: an incident that requires approval and
    whose newest plan nobody approved waits for an operator."""
    with announcing_transitions(actor=run_actor(), incident_id=incident.id):
        state, made = runner.settle_plan(resources().engine, incident, run_actor(),
                                         dry_run=dry_run)
    plan = made.plan
    get_run_logger().info(
        "plan %s (%s): %d case(s)%s; incident %s", plan.short,
        "new" if made.new else "unchanged", plan.cases,
        "" if plan.decision is None else f", {plan.decision}d", state.describe())
    return state


@task(name="refresh-statistics", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_only)
def refresh_statistics() -> list[str]:
    """ANALYZE the tables whose planner statistics are missing or stale (PostgreSQL); stop
    the run in one line when a platform table has none and may not be analyzed here."""
    analyzed = planner_statistics.refresh(resources().engine)
    if analyzed:
        get_run_logger().info("analyzed %s: their statistics were missing or stale",
                              ", ".join(analyzed))
    return analyzed


@task(name="plan-candidates", **BATCH_TASK_OPTIONS)
def plan_candidates(incident: RegisteredIncident, batch_size: int) -> int:
    """Create a case for each candidate account, page by page (keyset on account id), in
    as many parts of the account ids at once as batches run at once (REINSTATE_WORKERS)."""
    created = runner.plan_all(step_context(incident, batch_size),
                              parallel=resources().settings.workers)
    get_run_logger().info("planned %d new case(s)", created)
    return created


@task(name="verify-batch", **BATCH_TASK_OPTIONS)
def verify_cases(incident: RegisteredIncident, batch_size: int, preview: bool,
                 run_id: int | None = None) -> dict[str, Any]:
    """Judge one batch of planned cases against the corrected rule versions.

    It holds a slot of the global limit reinstatement-database-batches while it runs.
    """
    with limits.database_batch():
        return runner.batch_detail(runner.verify_one_batch(
            step_context(incident, batch_size, run_id), preview))


@task(name="restore-batch", **BATCH_TASK_OPTIONS)
def restore_cases(incident: RegisteredIncident, batch_size: int,
                  run_id: int | None = None) -> dict[str, Any]:
    """Restore one batch of reinstated accounts with their pins, and queue their notices.

    It holds a slot of the global limit reinstatement-database-batches while it runs.
    """
    with limits.database_batch():
        return runner.batch_detail(runner.restore_one_batch(
            step_context(incident, batch_size, run_id)))


@task(name="settle-batch", **BATCH_TASK_OPTIONS)
def settle_cases(incident: RegisteredIncident, batch_size: int,
                 run_id: int | None = None) -> dict[str, Any]:
    """Verify one batch of planned cases and restore its reinstatements in the same
    transaction (an incident that may restore now: no approval stands between the two).

    It holds a slot of the global limit reinstatement-database-batches while it runs.
    """
    with limits.database_batch():
        return runner.batch_detail(runner.settle_one_batch(
            step_context(incident, batch_size, run_id)))
