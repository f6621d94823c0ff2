"""The reinstatement of one incident, as a Prefect flow.

Step 1, register the incident under its key (or check a rerun asks the same thing).
Step 2, plan: a case for every candidate account.
Step 3, verify: judge every case against the corrected rule versions.
Step 4, preview and approval: publish the outcomes; when approval is required, pause
        until an operator approves or rejects in the Prefect UI.
Step 5, restore: reinstated accounts, their unban, ban reversals and pins, in batches.
Step 6, notify: send the queued notices.
Step 7, report.

Every step reads the state the previous one left in the pipeline's tables, so running
the flow again for the same key continues exactly where an earlier run stopped.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from prefect import Task, flow
from prefect.futures import PrefectFuture, as_completed
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field
from sqlalchemy import insert, select, update

from reinstatement import runner
from reinstatement.db import get_engine, utcnow
from reinstatement.errors import BadInput
from reinstatement.incidents import IncidentRequest, load_incident
from reinstatement.models import Case, Incident, Run
from reinstatement.retrying import in_transaction
from reinstatement.settings import load_settings
from reinstatement.steps import CaseState, pending_work
from tasks.notify import send_notices
from tasks.pipeline import (
    plan_candidates,
    register_incident,
    restore_cases,
    run_actor,
    step_context,
    verify_cases,
)
from tasks.reporting import Progress, publish_preview, publish_report

APPROVAL_TIMEOUT_SECONDS = 7 * 24 * 3600
# The pool is sized for the largest of REINSTATE_WORKERS and REINSTATE_SMTP_CONNECTIONS
# (at most 8 each); those settings limit how many tasks of each kind really run at once.
MAX_PARALLEL_TASKS = 8


class ApprovalDecision(RunInput):
    """An operator's decision on a previewed incident."""

    approve: bool = Field(
        False, title="Approve", description="Tick to restore the accounts previewed above."
    )
    operator: str = Field(
        ..., title="Operator", description="Your name or handle, for the audit trail.",
        min_length=1, max_length=100,
    )
    note: str = Field(
        "", title="Note", description="Why you approve or reject.", max_length=2000
    )


class BatchesFailed(RuntimeError):
    """Some batch tasks failed after their retries; the rest of their step is left undone."""


def _pending(incident_key: str | None, batch_size: int, pending_key: str) -> int:
    if incident_key is None:  # notices of every incident (the nightly reconciliation)
        from reinstatement.outbox import due_count

        with get_engine(load_settings().database_url).connect() as conn:
            return due_count(conn)
    return runner.pending(step_context(incident_key, batch_size)).get(pending_key, 0)


def run_batches(step: Task[..., dict[str, Any]], incident_key: str | None, batch_size: int,
                pending_key: str, progress_name: str, **task_args: Any) -> dict[str, Any]:
    """Submit enough batch tasks for the pending work, resolve them all, repeat until none.

    Each task claims its own batch, so the number submitted only bounds the work. Every
    future is resolved and every failure counted: a failed batch fails the run.
    """
    logger = get_run_logger()
    totals: dict[str, Any] = {"cases": 0, "outcomes": Counter(), "pins_restored": 0,
                              "notices_queued": 0, "changed_since_verification": 0}
    remaining = _pending(incident_key, batch_size, pending_key)
    progress = Progress(incident_key or "all-incidents", progress_name, remaining)
    while remaining:
        futures: list[PrefectFuture[dict[str, Any]]] = [
            step.submit(incident_key, batch_size, **task_args)
            for _ in range(math.ceil(remaining / batch_size))
        ]
        failures: list[BaseException] = []
        processed = 0
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - counted and raised below
                failures.append(exc)
                continue
            processed += result["cases"]
            for name, value in result.items():
                if name == "outcomes":
                    totals["outcomes"].update(value)
                elif isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
            progress.advance(result["cases"])
        if failures:
            raise BatchesFailed(
                f"{len(failures)} of {len(futures)} {progress_name} batches failed; first: "
                f"{failures[0]!r}"
            )
        if processed == 0:
            # Another run holds the rest of the work (claims skip locked cases).
            logger.warning("%d %s cases are being handled by another run", remaining,
                           progress_name)
            break
        remaining = _pending(incident_key, batch_size, pending_key)
    totals["outcomes"] = dict(totals["outcomes"])
    return totals


def _start_run(incident_id: int, dry_run: bool) -> int:
    engine = get_engine(load_settings().database_url)

    def work(conn: Any) -> int:
        return int(conn.execute(
            insert(Run).values(
                incident_id=incident_id, flow_run_id=run_actor().removeprefix("flow-run:"),
                dry_run=dry_run, status="running", started_at=utcnow(),
            ).returning(Run.id)
        ).scalar_one())

    return in_transaction(engine, work)


def _finish_run(run_id: int, status: str, step_seconds: dict[str, float]) -> None:
    engine = get_engine(load_settings().database_url)
    in_transaction(engine, lambda conn: conn.execute(
        update(Run).where(Run.id == run_id).values(
            status=status, finished_at=utcnow(),
            step_seconds={k: round(v, 3) for k, v in step_seconds.items()},
        )
    ))


def _approval_state(incident_key: str) -> tuple[str, str | None]:
    return runner.incident_status(get_engine(load_settings().database_url), incident_key)


def _record_approval(incident_id: int, decision: ApprovalDecision) -> None:
    engine = get_engine(load_settings().database_url)
    verdict = "approved" if decision.approve else "rejected"

    def work(conn: Any) -> None:
        runner.set_incident_status(
            conn, incident_id, "approved" if decision.approve else "rejected",
            f"operator:{decision.operator}", decision.note or verdict,
            approval=verdict, approved_by=decision.operator, approval_note=decision.note,
            approval_decided_at=utcnow(),
        )

    in_transaction(engine, work)


def _set_status(incident_id: int, status: str, reason: str) -> None:
    engine = get_engine(load_settings().database_url)
    in_transaction(engine, lambda conn: runner.set_incident_status(
        conn, incident_id, status, run_actor(), reason))


def _reset_previews(incident_id: int) -> None:
    """A new dry run previews every unverified case again, against the data as it is now."""
    engine = get_engine(load_settings().database_url)
    in_transaction(engine, lambda conn: conn.execute(
        update(Case)
        .where(Case.incident_id == incident_id, Case.state == CaseState.PREVIEWED)
        .values(state=CaseState.PLANNED)
    ))


@flow(
    name="reinstate-incident",
    description="Find, verify and restore the accounts an incident banned by mistake, "
    "then tell each user.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
    validate_parameters=True,
)
def reinstate_incident(request: IncidentRequest) -> dict[str, Any]:
    """Reinstate the accounts of one incident; returns the incident's report."""
    logger = get_run_logger()
    incident_id = register_incident(request)
    status, approval = _approval_state(request.incident_key)
    if approval == "rejected" and not request.dry_run:
        raise BadInput(f"incident {request.incident_key} was rejected by an operator; "
                       "declare a new incident key to try again")
    run_id = _start_run(incident_id, request.dry_run)
    timings: dict[str, float] = {}
    final_status = "failed"
    key, size = request.incident_key, request.batch_size
    try:
        _plan_and_verify(key, size, incident_id, timings, preview=request.dry_run)

        if request.dry_run:
            publish_preview(key, dry_run=True)
            final_status = "previewed"
            return publish_report(key)

        if request.require_approval and approval != "approved":
            publish_preview(key, dry_run=False)
            _set_status(incident_id, "awaiting_approval", "preview published")
            logger.info("waiting for an operator to approve or reject incident %s", key)
            decision = pause_for_approval()
            _record_approval(incident_id, decision)
            if not decision.approve:
                logger.warning("incident %s rejected by %s: nothing restored", key,
                               decision.operator)
                final_status = "rejected"
                return publish_report(key)

        _restore_and_notify(key, size, request.notify, timings)
        final_status = "completed" if _set_completed(incident_id) else "handed over"
        return publish_report(key)
    finally:
        _finish_run(run_id, final_status, timings)


def _plan_and_verify(key: str, size: int, incident_id: int, timings: dict[str, float], *,
                     preview: bool) -> None:
    """Steps 2 and 3: a case for every candidate, then every case judged."""
    started = time.perf_counter()
    plan_candidates(key, size)
    timings["plan"] = time.perf_counter() - started

    started = time.perf_counter()
    if preview:
        _reset_previews(incident_id)
    verified = run_batches(verify_cases, key, size, "preview" if preview else "verify",
                           "verify", preview=preview)
    timings["verify"] = time.perf_counter() - started
    get_run_logger().info("verified %d case(s): %s", verified["cases"], verified["outcomes"])


def _restore_and_notify(key: str, size: int, notify: bool, timings: dict[str, float]) -> None:
    """Steps 5 and 6: restore every verified reinstatement, then send the due notices."""
    logger = get_run_logger()
    started = time.perf_counter()
    restored = run_batches(restore_cases, key, size, "restore", "restore")
    timings["restore"] = time.perf_counter() - started
    logger.info("restored %d account(s), %d pin(s)", restored["outcomes"].get(
        "reinstated", 0), restored["pins_restored"])
    if notify:
        started = time.perf_counter()
        sent = run_batches(send_notices, key, size, "notify", "notify")
        logger.info("notices: %d sent, %d to retry, %d failed", sent.get("sent", 0),
                    sent.get("retry", 0), sent.get("failed", 0))
        timings["notify"] = time.perf_counter() - started


@flow(
    name="resume-incident",
    description="Continue an incident that a crashed or cancelled run left mid-way.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
)
def resume_incident(incident_key: str, batch_size: int = 5000) -> dict[str, Any]:
    """Continue a running or approved incident where its last run stopped."""
    status, _ = _approval_state(incident_key)
    if status not in ("running", "approved", "completed"):
        raise BadInput(f"incident {incident_key} is {status}: only a running or approved "
                       "incident is resumed without an operator")
    engine = get_engine(load_settings().database_url)
    with engine.connect() as conn:
        incident = load_incident(conn, incident_key)
    run_id = _start_run(incident.id, dry_run=False)
    timings: dict[str, float] = {}
    final_status = "failed"
    try:
        _plan_and_verify(incident_key, batch_size, incident.id, timings, preview=False)
        _restore_and_notify(incident_key, batch_size, incident.notify, timings)
        final_status = "completed" if _set_completed(incident.id) else "handed over"
        return publish_report(incident_key)
    finally:
        _finish_run(run_id, final_status, timings)


def pause_for_approval() -> ApprovalDecision:
    from prefect.flow_runs import pause_flow_run

    decision: ApprovalDecision = pause_flow_run(
        wait_for_input=ApprovalDecision, timeout=APPROVAL_TIMEOUT_SECONDS,
        key="operator-approval", poll_interval=2,
    )
    return decision


def _set_completed(incident_id: int) -> bool:
    """Mark the incident completed if no case waits for verification or restore."""
    engine = get_engine(load_settings().database_url)

    def work(conn: Any) -> bool:
        if pending_work(conn, incident_id):
            return False
        status = conn.execute(select(Incident.status).where(Incident.id == incident_id)
                              ).scalar_one()
        if status != "completed":
            runner.set_incident_status(conn, incident_id, "completed", run_actor(),
                                       "every case verified and every restore done")
        return True

    return in_transaction(engine, work)
