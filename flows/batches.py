"""Running one step's batch tasks inside a flow run, until none of its work is left.

`run_batches` is what a flow run does itself (an incident run with one child run per step,
the default; each child run of a fanned-out step; the nightly reconciliation's notices).
It keeps up to `parallel` batch tasks going at once (REINSTATE_WORKERS for verify and
restore, REINSTATE_SMTP_CONNECTIONS for notify) and submits the next as each one ends.
Each task claims its own batch (SKIP LOCKED on PostgreSQL), so once a task comes back
with nothing claimed no more are submitted: what is left is done, or held by another run.
Every future is resolved and every failure counted: a failed batch fails the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger

from reinstatement import runner
from reinstatement.batches import StepResult
from reinstatement.incidents import RegisteredIncident
from reinstatement.resources import resources
from tasks.pipeline import step_context
from tasks.progress import Progress, stopped_by

# The flows' thread pools are sized for the largest of REINSTATE_WORKERS and
# REINSTATE_SMTP_CONNECTIONS (at most 8 each); run_batches keeps to those settings.
MAX_PARALLEL_TASKS = 8


class BatchesFailed(RuntimeError):
    """Some batch tasks failed after their retries; the rest of their step is left undone."""



def pending(incident: RegisteredIncident | None, batch_size: int, pending_key: str) -> int:
    """How much work of the step waits: cases to verify or restore, notices due."""
    if incident is None:  # notices of every incident (the nightly reconciliation)
        from reinstatement.outbox import due_count

        with resources().engine.connect() as conn:
            return due_count(conn)
    return runner.pending(step_context(incident, batch_size)).get(pending_key, 0)


ALL_INCIDENTS = "all-incidents"


def remaining_counter(incident: RegisteredIncident | None, batch_size: int,
                      pending_key: str) -> Callable[[], int]:
    """A count of the step's work not yet committed, one statement a call (the notices of
    every incident with None): what its progress card reads while it runs."""
    if incident is None:
        from reinstatement.outbox import unsettled_count

        engine = resources().engine

        def every_incident() -> int:
            with engine.connect() as conn:
                return unsettled_count(conn, None)

        return every_incident
    return runner.remaining_counter(step_context(incident, batch_size), pending_key)


def step_progress(incident: RegisteredIncident | None, batch_size: int, pending_key: str,
                  progress_name: str, total: int) -> Progress:
    """The step's progress card, watching the work it has left (see `Progress`)."""
    counter = remaining_counter(incident, batch_size, pending_key) if total else None
    return Progress(incident.key if incident else ALL_INCIDENTS, progress_name, total,
                    remaining=counter, pending_key=pending_key,
                    incident=incident.key if incident else "")


def remaining_of(incident_key: str, pending_key: str) -> int:
    """The work an incident's step (all incidents' notices, with "") has left now."""
    from reinstatement.incidents import load_incident

    if not incident_key:
        return remaining_counter(None, 1, pending_key)()
    with resources().engine.connect() as conn:
        incident = load_incident(conn, incident_key)
    return remaining_counter(incident, 1, pending_key)()


def notices_detail(totals: StepResult) -> str | None:
    """What a notify step's final card adds: how its notices ended."""
    if not (totals.sent or totals.retry or totals.failed):
        return None
    return f"{totals.sent:,} sent, {totals.retry:,} to retry, {totals.failed:,} failed"




def _first_done(futures: list[PrefectFuture[dict[str, Any]]]) -> PrefectFuture[dict[str, Any]]:
    waiting = as_completed(futures)
    try:
        return next(waiting)
    finally:
        waiting.close()


def _wave(step: Task[..., dict[str, Any]], incident: RegisteredIncident | None,
          batch_size: int, remaining: int, parallel: int, run_id: int | None,
          progress_name: str, totals: StepResult, progress: Progress | None,
          task_args: dict[str, Any]) -> int:
    """Batch tasks for the work counted (`remaining`), `parallel` at a time, until they
    have all run or one claims nothing; the cases (or notices) they did."""
    wanted = math.ceil(remaining / batch_size)
    running: list[PrefectFuture[dict[str, Any]]] = []
    failures: list[BaseException] = []
    submitted = processed = 0
    drained = False

    def submit_what_may_run() -> None:
        nonlocal submitted
        while (submitted < wanted and len(running) < parallel and not drained
               and not failures):
            running.append(step.submit(incident, batch_size, run_id=run_id, **task_args))
            submitted += 1

    while running or (submitted < wanted and not drained and not failures):
        submit_what_may_run()
        future = _first_done(running)
        running.remove(future)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - counted and raised below
            failures.append(exc)
            continue
        if not result["cases"]:
            drained = True  # nothing left to claim: done, or held by another run
        # The next batch starts before the bookkeeping: the progress artifact's update is
        # a call to Prefect's server, which a busy server answers late.
        submit_what_may_run()
        processed += result["cases"]
        totals.add(result)
        if progress is not None:
            progress.advance(result["cases"])
    if failures:
        raise BatchesFailed(
            f"{len(failures)} of {submitted} {progress_name} batches failed; first: "
            f"{failures[0]!r}"
        )
    return processed


def run_batches(step: Task[..., dict[str, Any]], incident: RegisteredIncident | None,
                batch_size: int, pending_key: str, progress_name: str, *,
                parallel: int | None = None, run_id: int | None = None,
                publish_progress: bool = True, **task_args: Any) -> dict[str, Any]:
    """Run batch tasks of one step until no work of it is left (or the rest is another
    run's), `parallel` at a time; returns the step's totals.

    `run_id`: the run (reinstatement_runs.id) each batch is recorded under, with where it
    ran. `publish_progress`: move the step's progress artifact (a child run leaves that to
    its parent, which sees every child's batches).
    """
    logger = get_run_logger()
    if parallel is None:
        settings = resources().settings
        parallel = settings.smtp_connections if pending_key == "notify" else settings.workers
    totals = StepResult()
    remaining = pending(incident, batch_size, pending_key)
    progress = (step_progress(incident, batch_size, pending_key, progress_name, remaining)
                if publish_progress else None)
    try:
        while remaining:
            processed = _wave(step, incident, batch_size, remaining, parallel, run_id,
                              progress_name, totals, progress, task_args)
            if processed == 0:
                # Another run holds the rest of the work (claims skip locked cases).
                logger.warning("%d %s cases are being handled by another run", remaining,
                               progress_name)
                break
            remaining = pending(incident, batch_size, pending_key)
    except BaseException as exc:
        if progress is not None:
            progress.finish(stopped_by(exc))
        raise
    if progress is not None:
        progress.finish(detail=notices_detail(totals) if pending_key == "notify" else None)
    return totals.as_dict()
