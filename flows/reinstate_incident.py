"""The reinstatement of one incident, as a Prefect flow.

Step 1, register the incident under its key (or check a rerun asks the same thing).
Step 2, plan: a case for every candidate account.
Step 3, verify: judge every case against the corrected rule versions.
Step 4, plan, preview and approval: publish the outcomes. An incident that requires
        approval restores only the plan an operator approved: a deployment run
        suspends (holding no process) until the operator decides in the Prefect UI; a
        run started elsewhere (the CLI) ends there, awaiting `reinstate approve`.
Step 5, restore: reinstated accounts, their unban, ban reversals and pins, in batches.
Step 6, notify: send the queued notices.
Step 7, report.

Every step reads the state the previous one left in the pipeline's tables, so running
the flow again for the same key continues exactly where an earlier run stopped.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.exceptions import Pause
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import deployment
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

# run_batches and BatchesFailed live in flows/batches.py; imported here for the flows
# and tests that take them from this module.
from flows.batches import MAX_PARALLEL_TASKS, pending
from flows.incident_step import StepRunner, require_step_deployment
from flows.run_state import (
    failed_for_notices,
    failed_plainly,
    on_cancelled,
    on_crashed,
    on_failed,
    rejected,
    tag_run_with_incident,
)
from reinstatement import incident_states, plan_records, plans, runs
from reinstatement.errors import BadInput
from reinstatement.failed_notices import describe as describe_failed
from reinstatement.incident_request import IncidentRequest, build_request
from reinstatement.incident_states import IncidentStatus
from reinstatement.incidents import RegisteredIncident
from reinstatement.plans import PlanRef
from reinstatement.resources import resources
from tasks.events import emit_notices_failed
from tasks.incident_state import (
    begin_real_run,
    complete_if_done,
    failed_notices,
    finish_run,
    incident_state,
    load_registered,
    mark_waiting,
    plain,
    record_decision,
    record_preview,
    reset_previews,
    start_run,
)
from tasks.pipeline import (
    make_plan,
    plan_candidates,
    refresh_statistics,
    register_incident,
)
from tasks.reporting import preview_key, publish_preview, publish_report, samples_key
from tasks.waits import ended_waits

APPROVAL_TIMEOUT_SECONDS = 30 * 24 * 3600


class ApprovalDecision(RunInput):
    """An operator's decision on the plan a run previewed. Decision, operator and note have
    no default: an untouched form cannot be submitted, so nobody rejects (or approves) by
    accident. The plan is filled in with the digest of the plan the run waits on."""

    decision: Literal["approve", "reject"] = Field(
        ..., title="Decision",
        description="approve: restore exactly the plan previewed above and notify its "
        "accounts' owners. reject: restore nothing, now or ever, under this incident key.",
    )
    operator: str = Field(
        ..., title="Operator", description="Your name or handle, for the audit trail. "
        "Whoever declared the incident may not approve it.",
        min_length=1, max_length=100, pattern=r"\S",
    )
    note: str = Field(
        ..., title="Note", description="Why you approve or reject (required; kept in the "
        "audit trail and shown on the report).", min_length=1, max_length=2000,
        pattern=r"\S",
    )
    plan: str = Field(
        ..., title="Plan", description="The digest of the plan you decide on, as the "
        "preview shows it (filled in with the plan this run waits on).",
        min_length=8, max_length=64,
    )



def _parameter(name: str, field: str | None = None) -> Any:
    """A parameter of the current flow run (a field of it, for the incident request)."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get(name)
    if field is None or value is None:
        return value
    return value.get(field) if isinstance(value, dict) else getattr(value, field, None)


def _incident_run_name() -> str:
    """`INC-2025-04-spam: preview` or `INC-2025-04-spam: restore`, for the run lists."""
    key = _parameter("request", "incident_key") or "incident"
    return f"{key}: {'preview' if _parameter('request', 'dry_run') else 'restore'}"


def _resume_run_name() -> str:
    return f"{_parameter('incident_key') or 'incident'}: resume"


@flow(
    name="reinstate-incident",
    description="Find, verify and restore the accounts an incident banned by mistake, "
    "then tell each user.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
    # The form's schema (IncidentRequest's) is enforced by Prefect's server before a run
    # exists; what it cannot express (the window's order, say) is checked here, at the
    # run's start, so that it fails in plain words rather than as Prefect's parameter error.
    validate_parameters=False,
    flow_run_name=_incident_run_name,
    on_cancellation=[on_cancelled],
    on_crashed=[on_crashed],
    on_failure=[on_failed],
)
def reinstate_incident(request: IncidentRequest) -> Any:
    """Reinstate the accounts of one incident; returns the incident's report.

    A rejected incident ends the run Cancelled ("rejected by NAME: note"), never Completed.
    Bad input (the window's end before its start, an unknown version, a key reused with
    other parameters) fails the run at once with one plain log line and the same text as
    its state message, no traceback.
    """
    try:
        return _reinstate_incident(_as_request(request))
    except BadInput as exc:
        return failed_plainly(exc)


def _as_request(request: object) -> IncidentRequest:
    """The form's values as an IncidentRequest; BadInput naming each bad field."""
    if isinstance(request, IncidentRequest):
        return request
    if not isinstance(request, dict):
        raise BadInput("request: give the incident's parameters (its key, faulty versions, "
                       "window and options)")
    return build_request(**request)


def _reinstate_incident(request: IncidentRequest) -> Any:
    require_step_deployment(request.child_runs)
    tag_run_with_incident(request.incident_key)
    refresh_statistics()  # the platform's, before anything is written or read at scale
    incident = register_incident(request)
    incident_states.refuse_if_rejected(incident_state(incident))
    run_id = start_run(incident.id, request.dry_run)
    ended_waits()  # a run cancelled while it waited for a decision says so from now on
    steps = StepRunner(run_id, request.batch_size, request.child_runs)
    timings: dict[str, float] = {}
    final_status, end = "failed", None
    try:
        if request.dry_run:
            _plan_and_verify(incident, steps, timings, preview=True)
            make_plan(incident, dry_run=True)
            publish_preview(incident.key, dry_run=True)
            plain(record_preview(incident))
            final_status = "previewed"
        else:
            final_status, end = _carry_on(incident, steps, timings, wait=True)
    except Pause:
        # Suspended for the operator's decision: this run's part ended as it should; the
        # run after the Resume records its own (and this one's row says 'resumed').
        final_status = runs.WAITING
        raise
    finally:
        report = _finish(incident.key, run_id, final_status, timings)
    return end if end is not None else report


def _finish(incident_key: str, run_id: int, status: str, timings: dict[str, float]) -> Any:
    """The run's row gets its final status and finish time, then the incident's report is
    published: its runs table shows this run ended, as the database has it. Called on
    every way out of a run (a failure's report must not hide the failure: a report that
    cannot be published then is logged, and the run's own error stands)."""
    if status == runs.WAITING:
        # The run is suspended already, and Prefect starts no task of a suspended run:
        # the same two steps, as plain calls.
        runs.finish_run(resources().engine, run_id, status, timings)
        return publish_report.fn(incident_key)
    finish_run(run_id, status, timings)
    try:
        return publish_report(incident_key)
    except Exception as exc:  # noqa: BLE001 - on the way out of a failure, keep its error
        if status != "failed":
            raise
        get_run_logger().warning("could not publish the report of %s: %s", incident_key, exc)
        return None


def _carry_on(incident: RegisteredIncident, steps: StepRunner, timings: dict[str, float], *,
              wait: bool) -> tuple[str, Any]:
    """A real run: plan, verify, the operator's decision where needed, restore, notify.

    An incident that requires approval restores only what its newest plan holds once an
    operator approved that plan: after verifying, the run makes the plan of the cases as
    judged now (the same plan when nothing changed); a plan nobody approved yet waits for
    a decision. `wait`: a deployment run suspends for it; otherwise the run ends awaiting
    it. Returns the run's final status and its end when that is not its report (a Failed
    state for failed notices, a Cancelled one for a rejection); the caller publishes the
    report once the run's row holds its end.
    """
    logger = get_run_logger()
    plain(begin_real_run(incident))
    started: float | None = time.perf_counter()
    _plan_and_verify(incident, steps, timings, preview=False)
    state = incident_state(incident)
    if incident.require_approval or state.status == IncidentStatus.AWAITING_APPROVAL:
        state = make_plan(incident, dry_run=False)
    if state.status == IncidentStatus.AWAITING_APPROVAL and state.plan is not None:
        if not wait or deployment.get_id() is None:
            # Not a deployment run: it cannot be suspended, and holding a process for
            # days is worse than ending here; approval comes from `reinstate approve`.
            publish_preview(incident.key, dry_run=False)
            logger.info("incident %s %s", incident.key, state.describe())
            return "needs approval", None
        mark_waiting(steps.run_id)  # before the preview, whose words say where to decide
        publish_preview(incident.key, dry_run=False)
        logger.info("waiting for an operator to approve or reject plan %s of incident %s "
                    "in the UI (Resume, in the run's menu); no process is held meanwhile",
                    state.plan.short, incident.key)
        decision = wait_for_decision(incident, state.plan)
        mark_waiting(steps.run_id, waiting=False)
        state = plain(record_decision(incident, decision.decision, decision.operator,
                                      decision.plan, decision.note))
        publish_preview(incident.key, dry_run=False)  # it names the decision from now on
        if state.status == IncidentStatus.REJECTED:
            return "rejected", rejected(incident.key, state.describe())
        state = plain(begin_real_run(incident))
        started = None  # the operator's decision came between: no one figure for the steps
    if not state.may_restore() and state.status != IncidentStatus.COMPLETED:
        raise incident_states.TransitionRefused(
            f"incident {incident.key} may not restore: it is {state.describe()}")
    # (A completed incident that planning found no work for stays completed: the steps
    # below find nothing to restore, and send only notices that came due.)
    _restore_and_notify(incident, steps, timings, since=started)
    if incident.require_approval:
        # A case whose bans changed under the restore is judged again, not restored: a new
        # plan shows it, and the incident goes back to the operator.
        state = make_plan(incident, dry_run=False)
        if state.status == IncidentStatus.AWAITING_APPROVAL:
            publish_preview(incident.key, dry_run=False)
            logger.info("incident %s %s", incident.key, state.describe())
            return "needs approval", None
    done = complete_if_done(incident)
    failed = failed_notices(incident)
    if failed:
        emit_notices_failed(incident.key, failed)
        return "failed", failed_for_notices(
            f"incident {incident.key}: {describe_failed(failed)}; once the mail server "
            f"takes them, `reinstate notices resend {incident.key}` sends them again")
    return ("completed" if done else "handed over"), None


def _plan_and_verify(incident: RegisteredIncident, steps: StepRunner,
                     timings: dict[str, float], *, preview: bool) -> None:
    """Steps 2 and 3: a case for every candidate, then every case judged.

    A real run of an incident that needs no approval and may restore now verifies and
    restores in one pass, `settle`: each account is judged once, under the locks its
    restore takes, and restored in the same transaction. An incident that requires
    approval is only verified here: its restore writes what its approved plan holds.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    plan_candidates(incident, steps.batch_size)
    refresh_statistics()  # the cases planning just wrote
    timings["plan"] = time.perf_counter() - started
    if not preview:  # a completed incident runs again only if planning found it work
        plain(begin_real_run(incident))

    started = time.perf_counter()
    if preview:
        reset_previews(incident.id)
    settle = (not preview and not incident.require_approval
              and incident_state(incident).may_restore())
    step = "settle" if settle else ("preview" if preview else "verify")
    verified = steps.run(incident, step)
    timings["settle" if step == "settle" else "verify"] = time.perf_counter() - started
    if step == "settle":
        _log_settled(verified)
    else:
        logger.info("verified %d case(s): %s", verified["cases"], verified["outcomes"])


def _log_settled(settled: dict[str, Any]) -> None:
    get_run_logger().info(
        "verified %d case(s): %s; restored %d account(s), %d pin(s) in the same pass",
        settled["cases"], settled["outcomes"], settled.get("restored", 0),
        settled["pins_restored"])


def _restore_and_notify(incident: RegisteredIncident, steps: StepRunner,
                        timings: dict[str, float], *, since: float | None = None) -> None:
    """Steps 5 and 6: restore every verified reinstatement, then send the due notices.

    `since`: when this run began planning, if nothing stood between that and now; the
    wall time from there to the end of the restore is recorded as `plan_to_restore`.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    restored = steps.run(incident, "restore")
    timings["restore"] = time.perf_counter() - started
    if since is not None:
        timings["plan_to_restore"] = time.perf_counter() - since
    if restored["cases"] or "settle" not in timings:
        logger.info("restored %d account(s), %d pin(s)", restored["outcomes"].get(
            "reinstated", 0), restored["pins_restored"])
    if incident.notify:
        started = time.perf_counter()
        steps = replace(steps, batch_size=notify_batch_size(incident, steps.batch_size))
        sent = steps.run(incident, "notify")
        logger.info("notices: %d sent, %d to retry, %d failed", sent.get("sent", 0),
                    sent.get("retry", 0), sent.get("failed", 0))
        send_deferred_when_due(incident, steps)
        timings["notify"] = time.perf_counter() - started


def notify_batch_size(incident: RegisteredIncident, size: int) -> int:
    """The notify step's batch size: the notices due, in equal shares for the SMTP
    connections (`outbox.even_batch_size`)."""
    from reinstatement.outbox import even_batch_size
    from reinstatement.resources import resources

    return even_batch_size(pending(incident, size, "notify"), size,
                           resources().settings.smtp_connections)


def send_deferred_when_due(incident: RegisteredIncident, steps: StepRunner) -> None:
    """Notices a mail server deferred (greylisting) are sent again in this run once they
    come due, within REINSTATE_NOTIFY_RETRY_WAIT_SECONDS in all; the wait holds no
    connection. Later ones are left to the next run or the nightly reconciliation."""
    from reinstatement.outbox import next_deferred_due
    from reinstatement.resources import resources
    from reinstatement.store.engine import utcnow

    logger = get_run_logger()
    deadline = time.monotonic() + resources().settings.notify_retry_wait_seconds
    while True:
        with resources().engine.connect() as conn:
            due = next_deferred_due(conn, incident.id)
        if due is None:
            return
        wait = max(0.0, (due - utcnow()).total_seconds())
        if time.monotonic() + wait > deadline:
            logger.info("deferred notices come due after this run's wait: the next run "
                        "or the nightly reconciliation sends them")
            return
        logger.info("waiting %.0f s for deferred notices to come due", wait)
        time.sleep(wait)
        sent = steps.run(incident, "notify")
        if not sent["cases"]:
            return  # another run holds them
        logger.info("deferred notices: %d sent, %d to retry, %d failed", sent.get("sent", 0),
                    sent.get("retry", 0), sent.get("failed", 0))


def decision_key(plan: PlanRef) -> str:
    """The key a run's decision input is kept under: one per plan, so a decision given for
    a plan is never applied to another, and the rerun after the resume gets back the
    decision given for the plan it waits on."""
    return f"approval-{plan.digest[:32]}"


def wait_for_decision(incident: RegisteredIncident, plan: PlanRef) -> ApprovalDecision:
    """Suspend the run until an operator decides on `plan`; the run reruns from the top on
    resume. The form shows the plan's digest and counts, and names the plan."""
    from prefect.flow_runs import suspend_flow_run

    with resources().engine.connect() as conn:
        counts = plan_records.verdict_counts(conn, plan.id)
    described = (f"**Plan {plan.short}** of incident {incident.key} "
                 f"(digest `{plan.digest}`): {plans.describe_counts(counts)}. Read its "
                 f"preview on this run's Artifacts tab "
                 f"(`{preview_key(incident.key, plan.short)}`, and its sample cases "
                 f"`{samples_key(incident.key, plan.short)}`) before you decide. Approving "
                 "restores exactly this plan; whoever declared the incident may not approve "
                 "it.")
    form = ApprovalDecision.with_initial_data(description=described, plan=plan.digest)
    decision: ApprovalDecision = suspend_flow_run(
        wait_for_input=form, timeout=APPROVAL_TIMEOUT_SECONDS, key=decision_key(plan))
    return decision


@flow(
    name="resume-incident",
    description="Continue an incident that a crashed or cancelled run left mid-way.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
    flow_run_name=_resume_run_name,
    on_cancellation=[on_cancelled],
    on_crashed=[on_crashed],
    on_failure=[on_failed],
)
def resume_incident(
    incident_key: Annotated[str, Field(min_length=1, max_length=200)],
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000,
    child_runs: Annotated[int, Field(ge=1, le=32)] = 1,
) -> Any:
    """Continue a running or approved incident where its last run stopped.

    Args:
        incident_key: The key of a running or approved incident, e.g. INC-2025-04-spam.
        batch_size: Cases or notices per batch task, 1 to 50,000.
        child_runs: 1: this run works through each step itself; more: each step is fanned
            out to this many child runs of the incident-step deployment.
    """
    try:
        return _resume_incident(incident_key, batch_size, child_runs)
    except BadInput as exc:
        return failed_plainly(exc)


def _resume_incident(incident_key: str, batch_size: int, child_runs: int = 1) -> Any:
    require_step_deployment(child_runs)
    tag_run_with_incident(incident_key)
    incident = plain(load_registered(incident_key))
    state = incident_state(incident)
    incident_states.refuse_unapproved(state)
    if state.status not in (*incident_states.RESUMABLE, IncidentStatus.COMPLETED):
        raise BadInput(f"incident {incident_key} is {state.describe()}: only a running or "
                       "approved incident is resumed without an operator")
    run_id = start_run(incident.id, dry_run=False)
    timings: dict[str, float] = {}
    final_status, end = "failed", None
    try:
        final_status, end = _carry_on(incident, StepRunner(run_id, batch_size, child_runs),
                                      timings, wait=False)
    finally:
        report = _finish(incident_key, run_id, final_status, timings)
    return end if end is not None else report

