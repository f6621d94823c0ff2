"""The incident's lifecycle as tasks: each of a run's database steps that is not a batch
shows in the UI under its own name (start-run, incident-state, begin-real-run, ...).

Each is a thin wrapper over the plain-Python lifecycle (reinstatement/runner.py,
runs.py), which owns its transactions and their retries; a failure fails the task and,
through it, the flow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, ParamSpec, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from reinstatement import approval, runner, runs
from reinstatement.errors import BadInput
from reinstatement.failed_notices import by_reason as failed_notices_by_reason
from reinstatement.incident_states import IncidentState, IncidentStatus
from reinstatement.incidents import RegisteredIncident, load_incident
from reinstatement.resources import resources
from reinstatement.retrying import in_transaction
from tasks.events import announcing_transitions
from tasks.pipeline import run_actor

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Refused:
    """Bad input a task met (a refused transition or decision, an unknown key), handed
    back as a value: the flow then ends Failed with it as one plain line (flows/run_state),
    where an exception would put a traceback in the task's log."""

    message: str


def plain(value: T | Refused) -> T:
    """A task's value; its refusal raised as the flow's BadInput."""
    if isinstance(value, Refused):
        raise BadInput(value.message)
    return value


def _refusals_as_values(function: Callable[P, T]) -> Callable[P, T | Refused]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | Refused:
        try:
            return function(*args, **kwargs)
        except BadInput as exc:
            return Refused(str(exc))

    return wrapper


@task(name="start-run", cache_policy=NO_CACHE)
def start_run(incident_id: int, dry_run: bool) -> int:
    """This run's row, held while the run lives; runs found dead are named 'crashed'."""
    actor = run_actor()
    flow_run_id = actor.removeprefix("flow-run:") if actor.startswith("flow-run:") else None
    return runs.start_run(resources().engine, incident_id, flow_run_id, dry_run)


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run(run_id: int, status: str, step_seconds: dict[str, float]) -> None:
    """This run's row: its final status and each step's seconds."""
    runs.finish_run(resources().engine, run_id, status, step_seconds)


@task(name="wait-for-decision", cache_policy=NO_CACHE)
def mark_waiting(run_id: int, waiting: bool = True) -> None:
    """This run suspends for an operator's decision: its row says it waits (and the
    incident's status words say Resume is in the Prefect UI); `waiting=False` once the
    decision is in hand."""
    runs.mark_waiting(resources().engine, run_id, waiting)


@task(name="load-incident", cache_policy=NO_CACHE)
@_refusals_as_values
def load_registered(incident_key: str) -> RegisteredIncident:
    """The incident registered under `incident_key`."""
    with resources().engine.connect() as conn:
        return load_incident(conn, incident_key)


@task(name="incident-state", cache_policy=NO_CACHE)
def incident_state(incident: RegisteredIncident) -> IncidentState:
    """The incident's status, newest plan and decision, as they are now."""
    return runner.state(resources().engine, incident)


@task(name="begin-real-run", cache_policy=NO_CACHE)
@_refusals_as_values
def begin_real_run(incident: RegisteredIncident) -> IncidentState:
    """Mark the incident running for a real run, where its status allows one."""
    with announcing_transitions(actor=run_actor(), incident_id=incident.id):
        return runner.begin_real_run(resources().engine, incident, run_actor())


@task(name="record-preview", cache_policy=NO_CACHE)
@_refusals_as_values
def record_preview(incident: RegisteredIncident) -> IncidentState:
    """Record that a dry run previewed the incident."""
    with announcing_transitions(actor=run_actor(), incident_id=incident.id):
        return runner.record_preview(resources().engine, incident, run_actor())


@task(name="reset-previews", cache_policy=NO_CACHE)
def reset_previews(incident_id: int) -> None:
    """A new dry run previews every unverified case again, against the data as it is now."""
    runner.reset_previews(resources().engine, incident_id)


@task(name="complete-if-done", cache_policy=NO_CACHE)
def complete_if_done(incident: RegisteredIncident) -> bool:
    """Mark the incident completed when nothing is left to do; whether it was."""
    with announcing_transitions(actor=run_actor(), incident_id=incident.id):
        return runner.complete_if_done(resources().engine, incident, run_actor())


@task(name="record-decision", cache_policy=NO_CACHE)
@_refusals_as_values
def record_decision(incident: RegisteredIncident, decision: Literal["approve", "reject"],
                    operator: str, plan_digest: str, note: str) -> IncidentState:
    """The operator's decision from the UI, on the plan its form names; a decision already
    recorded (by `reinstate approve` or `reject` meanwhile) stands, and this one is not
    applied. A refused decision (the declarer approving, a superseded plan) is bad input:
    the run fails with that one line."""
    engine = resources().engine
    now = runner.state(engine, incident)
    if now.status != IncidentStatus.AWAITING_APPROVAL:
        return now
    identity = approval.ui_identity(operator, "operator")
    with announcing_transitions(actor=approval.operator_actor(identity),
                                incident_id=incident.id):
        state, _ = runner.decide(engine, incident, decision, identity,
                                 plan_digest=plan_digest, operator=operator, note=note)
    return state


@task(name="count-failed-notices", cache_policy=NO_CACHE)
def failed_notices(incident: RegisteredIncident) -> dict[str, int]:
    """The incident's notices that failed for good, per reason."""
    with resources().engine.connect() as conn:
        return failed_notices_by_reason(conn, incident.id)


@task(name="requeue-failed-notices", cache_policy=NO_CACHE)
@_refusals_as_values
def requeue_failed_notices(incident: RegisteredIncident, reason: str | None,
                           since: datetime | None) -> int:
    """Queue the incident's failed notices (of `reason`, failed since `since`) again, with
    their Message-IDs; how many."""
    from reinstatement.failed_notices import requeue

    return in_transaction(resources().engine, lambda conn: requeue(
        conn, incident.id, run_actor(), reason=reason, since=since).notices)
