"""Plain-Python drivers of the steps: one batch in one retried transaction.

Prefect's tasks (in `tasks/`) call these; tests and tools call them directly, without
Prefect. Every function opens its own transaction through `in_transaction`, so a
transient database failure re-runs the batch from the start, and a crash at any moment
leaves each batch either wholly done or not done at all.

The incident travels as a value (`RegisteredIncident`: its id, rules and parameters),
loaded once by the run; its status is read and changed only through
`reinstatement.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from reinstatement import (
    approval,
    audit,
    batches,
    claims,
    incident_states,
    lifecycle,
    plan_records,
    planner_statistics,
    planning,
    restore,
    verify,
)
from reinstatement.approval import Identity
from reinstatement.incident_request import IncidentRequest
from reinstatement.incident_states import IncidentState, IncidentStatus
from reinstatement.incidents import RegisteredIncident, register_incident
from reinstatement.models import Case, Incident
from reinstatement.plans import PlanMade, PlanRef
from reinstatement.retrying import in_transaction
from reinstatement.states import PIPELINE_ACTOR, CaseState
from reinstatement.store import store_for

S = IncidentStatus


@dataclass(frozen=True)
class StepContext:
    engine: Engine
    incident: RegisteredIncident
    batch_size: int
    actor: str = PIPELINE_ACTOR
    sender_domain: str = "example.com"
    # The run (reinstatement_runs.id) whose batches these are: each committed batch is
    # recorded with where it ran (reinstatement/batches.py). None: not recorded.
    run_id: int | None = None


def batch_detail(result: batches.StepResult) -> dict[str, Any]:
    """One batch's result as the flow sums it and reinstatement_batches.detail holds it."""
    return replace(result, batches=1).as_dict()


def _recorded(conn: Connection, ctx: StepContext, step: str,
              result: batches.StepResult) -> batches.StepResult:
    """Record the batch in its own transaction (nothing for an empty claim)."""
    if ctx.run_id is not None and result.cases:
        batches.record_batch(conn, ctx.run_id, ctx.incident.id, step, result.cases,
                             batch_detail(result))
    return result


RestoreNotAllowed = approval.RestoreNotAllowed


# -- the incident's lifecycle, step by step -------------------------------------------

def register(engine: Engine, request: IncidentRequest, actor: str,
             declarer: Identity | None = None) -> RegisteredIncident:
    """Register the incident (or check a rerun asks the same thing); its status is
    untouched. `declarer`: who declares it (recorded when the key is new); by default,
    whoever runs this process (`approval.process_identity`)."""

    def work(conn: Connection) -> RegisteredIncident:
        known = conn.execute(select(Incident.id).where(Incident.key == request.incident_key)
                             ).scalar_one_or_none()
        if known is not None:
            return register_incident(conn, request)
        who = declarer or approval.process_identity(conn)
        incident = register_incident(conn, request, who.name, who.via)
        audit.audit_incident(conn, incident.id, None, S.REGISTERED, actor,
                             f"declared by {who.describe()} with {request.parameters()}")
        return incident

    try:
        return in_transaction(engine, work)
    except IntegrityError:
        # Another run registered the same key a moment ago: check against that one.
        return in_transaction(engine, work)


def state(engine: Engine, incident: RegisteredIncident) -> IncidentState:
    with engine.connect() as conn:
        return lifecycle.current_state(conn, incident.id)


def change(engine: Engine, incident: RegisteredIncident, to: IncidentStatus, actor: str,
           reason: str) -> IncidentState:
    """One lifecycle transition in its own transaction (see `lifecycle.transition`)."""
    return in_transaction(engine, lambda conn: lifecycle.transition(
        conn, incident.id, to, actor, reason))


def decide(engine: Engine, incident: RegisteredIncident, decision: approval.DecisionKind,
           identity: Identity, *, plan_digest: str | None = None,
           operator: str | None = None, note: str = "") -> tuple[IncidentState, PlanRef]:
    """An operator's decision on the incident's newest plan (see `approval.decide`)."""
    return in_transaction(engine, lambda conn: approval.decide(
        conn, incident.id, decision, identity, plan_digest=plan_digest, operator=operator,
        note=note))


def _move_if(engine: Engine, incident: RegisteredIncident, when: Callable[[IncidentState], bool],
             to: IncidentStatus, actor: str, reason: str) -> IncidentState:
    """Transition to `to` if `when` holds for the status as it is under lock; else no change."""

    def work(conn: Connection) -> IncidentState:
        now = lifecycle.current_state(conn, incident.id, lock=True)
        if not when(now):
            return now
        return lifecycle.transition(conn, incident.id, to, actor, reason)

    return in_transaction(engine, work)


def record_preview(engine: Engine, incident: RegisteredIncident, actor: str) -> IncidentState:
    """A dry run finished: 'previewed', unless the incident is further along already."""
    return _move_if(engine, incident, lambda s: s.status in (S.REGISTERED, S.PREVIEWED),
                    S.PREVIEWED, actor, "dry run: preview published")


def reset_previews(engine: Engine, incident_id: int) -> None:
    """A new dry run previews every unverified case again, against the data as it is now."""
    in_transaction(engine, lambda conn: conn.execute(
        update(Case)
        .where(Case.incident_id == incident_id, Case.state == CaseState.PREVIEWED)
        .values(state=CaseState.PLANNED)))


def begin_real_run(engine: Engine, incident: RegisteredIncident, actor: str) -> IncidentState:
    """A real run starts: 'running' if the incident may restore; unchanged otherwise.

    An incident that needs approval stays where it is until its newest plan is approved;
    one that does not goes to 'running' before planning, so that a crash mid-way leaves it
    for the nightly reconciliation to resume. A completed incident goes back to running
    only when it has work again (a case planned since, say): a run asked of a finished
    incident that finds nothing new leaves it completed. The flows ask again after
    planning.
    """
    def work(conn: Connection) -> IncidentState:
        s = lifecycle.current_state(conn, incident.id, lock=True)
        if s.status == S.REJECTED or s.status == S.RUNNING:
            return s
        if s.require_approval and not s.approved:
            return s
        ready = {S.APPROVED} if s.require_approval else {S.REGISTERED, S.PREVIEWED,
                                                         S.APPROVED}
        if s.status == S.COMPLETED:
            pending = claims.pending_work(conn, incident.id)
            if not (pending.get("verify") or pending.get("restore")):
                return s
        elif s.status not in ready:
            return s
        return lifecycle.transition(conn, incident.id, S.RUNNING, actor, "a real run began")

    return in_transaction(engine, work)


# Statuses from which a new plan sends an incident that requires approval back to the
# operator (a rejected incident makes no plan at all).
_UNDECIDED_FROM = (S.REGISTERED, S.PREVIEWED, S.APPROVED, S.RUNNING, S.COMPLETED)


def settle_plan(engine: Engine, incident: RegisteredIncident, actor: str, *,
                dry_run: bool) -> tuple[IncidentState, PlanMade]:
    """The plan of the incident's cases as judged now, and where that leaves the incident.

    The plan is new when the judgement changed since the newest plan (`plan_records.make_plan`).
    For an incident that requires approval, a real run whose newest plan is not approved
    goes to awaiting approval (from wherever it was, short of rejected), and one whose
    newest plan is approved goes on running; a dry run's new plan supersedes an approved
    one, and sends the incident back to the operator too.
    """
    made = plan_records.make_plan_in_transaction(engine, incident, actor, dry_run=dry_run)
    now = state(engine, incident)
    if not incident.require_approval:
        return now, made
    if now.approved and not dry_run:
        return begin_real_run(engine, incident, actor), made
    if now.approved or (dry_run and now.status in (S.REGISTERED, S.PREVIEWED)):
        return now, made
    superseded = made.previous if made.new else None
    reason = (f"plan {made.plan.short} awaits approval"
              + (f"; it supersedes plan {superseded.short}"
                 + (" (approved)" if superseded.approved else "") if superseded else ""))
    return _move_if(engine, incident, lambda s: s.status in _UNDECIDED_FROM,
                    S.AWAITING_APPROVAL, actor, reason), made


def complete_if_done(engine: Engine, incident: RegisteredIncident, actor: str) -> bool:
    """Mark the incident completed when it is: every case settled, and every notice sent,
    failed, without an address, suppressed, or waiting for a retry time still to come."""
    from reinstatement.outbox import unsettled_count

    def work(conn: Connection) -> bool:
        now = lifecycle.current_state(conn, incident.id, lock=True)
        if now.status not in (S.RUNNING, S.COMPLETED) or claims.pending_work(conn, incident.id):
            return False
        if unsettled_count(conn, incident.id):
            return False
        if now.status == S.RUNNING:
            lifecycle.transition(conn, incident.id, S.COMPLETED, actor,
                                 "every case verified and every restore done")
        return True

    return in_transaction(engine, work)


# -- the batch steps ------------------------------------------------------------------

def plan_all(ctx: StepContext, on_batch: Callable[[int], None] | None = None, *,
             parallel: int = 1) -> int:
    """A case for every account that is a candidate now, page by page over all of them.

    Every run walks the whole candidate set (keyset on the account id), so an account that
    became a candidate after an earlier planning, whatever its id, gets its case; an
    account that has one already is left as it is. Returns the cases created.

    `parallel` > 1 (PostgreSQL): the candidates' id range is cut into that many parts of
    equal width, each walked by its own thread and connection at once. Pages never
    overlap, and a case made twice is kept once whatever the order (ON CONFLICT), so the
    cases are the same as one walk makes; an account that becomes a candidate below a
    part's current page while it walks is planned by the next run, as with one walk.
    """
    if parallel > 1 and store_for(ctx.engine).concurrent_writers:
        with ctx.engine.connect() as conn:
            bounds = planning.candidate_id_range(conn, ctx.incident)
        if bounds is not None and bounds[1] - bounds[0] >= parallel:
            first, last = bounds
            width = (last - first + 1) / parallel
            # Part i: the ids above edges[i], up to and with edges[i + 1] (the last: all).
            edges = [first - 1 + round(width * i) for i in range(parallel)]
            parts = [(edges[i], edges[i + 1] + 1 if i + 1 < parallel else None)
                     for i in range(parallel)]
            with ThreadPoolExecutor(max_workers=parallel,
                                    thread_name_prefix="plan") as pool:
                futures = [pool.submit(_plan_range, ctx, after, before, on_batch)
                           for after, before in parts]
                return sum(future.result() for future in futures)
    return _plan_range(ctx, 0, None, on_batch)


def _plan_range(ctx: StepContext, after: int, before: int | None,
                on_batch: Callable[[int], None] | None) -> int:
    """Plan the candidates above `after` (and below `before`), page by page."""
    created_total = 0
    while True:
        def work(conn: Connection, after: int = after) -> tuple[int, int | None]:
            return planning.plan_batch(conn, ctx.incident, after, ctx.batch_size, before)

        created, last = in_transaction(ctx.engine, work)
        if last is None:
            return created_total
        created_total += created
        after = last
        if on_batch is not None:
            on_batch(created)


def verify_one_batch(ctx: StepContext, preview: bool) -> batches.StepResult:
    def work(conn: Connection) -> batches.StepResult:
        return _recorded(conn, ctx, "preview" if preview else "verify", verify.verify_batch(
            conn, ctx.incident, ctx.batch_size, preview=preview, actor=ctx.actor))

    return in_transaction(ctx.engine, work)


def restore_one_batch(ctx: StepContext) -> batches.StepResult:
    def work(conn: Connection) -> batches.StepResult:
        permit = approval.restore_permit(conn, ctx.incident.id)
        return _recorded(conn, ctx, "restore", restore.restore_batch(
            conn, ctx.incident, ctx.batch_size, permit, sender_domain=ctx.sender_domain,
            actor=ctx.actor))

    return in_transaction(ctx.engine, work)


def settle_one_batch(ctx: StepContext) -> batches.StepResult:
    """Verify a batch and restore its reinstatements in one transaction, when the incident
    may restore now and needs no approval; only verify it otherwise (an incident that
    requires approval restores only what its approved plan holds: verified first, then
    compared with the plan, then restored). See `restore.settle_batch`."""
    def work(conn: Connection) -> batches.StepResult:
        try:
            restoring = approval.restore_permit(conn, ctx.incident.id).plan is None
        except approval.RestoreNotAllowed:
            restoring = False
        return _recorded(conn, ctx, "settle", restore.settle_batch(
            conn, ctx.incident, ctx.batch_size, restoring=restoring,
            sender_domain=ctx.sender_domain, actor=ctx.actor))

    return in_transaction(ctx.engine, work)


def restore_cases(ctx: StepContext, case_ids: list[int]) -> batches.StepResult:
    """Restore these verified cases only (a reviewer's decision), in one transaction."""
    def work(conn: Connection) -> batches.StepResult:
        permit = approval.restore_permit(conn, ctx.incident.id)
        return restore.restore_batch(conn, ctx.incident, len(case_ids), permit,
                                   case_ids=case_ids, sender_domain=ctx.sender_domain,
                                   actor=ctx.actor)

    return in_transaction(ctx.engine, work)


def pending(ctx: StepContext) -> dict[str, int]:
    """How much work waits for each step: cases to verify or restore, notices due."""
    from reinstatement.outbox import due_count

    with ctx.engine.connect() as conn:
        now = lifecycle.current_state(conn, ctx.incident.id)
        restore_plan = now.plan.id if now.require_approval and now.approved and now.plan \
            else None
        work = claims.pending_work(conn, ctx.incident.id, restore_plan)
        if now.require_approval and restore_plan is None:
            work.pop("restore", None)  # nothing restores before an approval
        work["notify"] = due_count(conn, ctx.incident.id)
        return work


def remaining_counter(ctx: StepContext, key: str) -> Callable[[], int]:
    """A count of one step's work not yet committed (`key`: preview, verify, restore or
    notify, as `pending` names them), one statement a call: what the step's progress reads
    while it runs. Cases leave it as their batch commits; notices as each one's outcome
    does, while its batch still sends (a claimed notice still counts)."""
    from reinstatement.outbox import unsettled_count

    engine, incident_id = ctx.engine, ctx.incident.id
    if key == "notify":
        def notices() -> int:
            with engine.connect() as conn:
                return unsettled_count(conn, incident_id)

        return notices
    restore_plan = None
    if key == "restore":
        with engine.connect() as conn:
            now = lifecycle.current_state(conn, incident_id)
        restore_plan = now.plan.id if now.require_approval and now.approved and now.plan \
            else None

    def cases() -> int:
        with engine.connect() as conn:
            return claims.waiting_count(conn, incident_id, key, restore_plan)

    return cases


# -- the whole job without Prefect ----------------------------------------------------

def run_without_prefect(engine: Engine, request: IncidentRequest,
                        actor: str = PIPELINE_ACTOR, *,
                        restore: bool = True) -> IncidentState:
    """Register, plan, verify and (when the lifecycle allows) restore, as the flow does.

    For tests and tools: one batch at a time in this thread, no notices sent (they stay
    queued in the outbox). An incident that needs no approval is verified and restored in
    one pass (`settle_one_batch`), as the flow does; one that requires approval is
    verified, its plan made, and restored only if that plan is approved. `restore=False`
    stops after verification, as a crash would.
    """
    incident = register(engine, request, actor)
    incident_states.refuse_if_rejected(state(engine, incident))
    ctx = StepContext(engine, incident, request.batch_size, actor=actor)
    if request.dry_run:
        planner_statistics.refresh(engine)
        plan_all(ctx)
        planner_statistics.refresh(engine)
        while verify_one_batch(ctx, preview=True).cases:
            pass
        now, _ = settle_plan(engine, incident, actor, dry_run=True)
        return record_preview(engine, incident, actor)
    begin_real_run(engine, incident, actor)
    planner_statistics.refresh(engine)
    plan_all(ctx)
    planner_statistics.refresh(engine)
    now = begin_real_run(engine, incident, actor)  # again: a completed one may have work now
    if restore and now.may_restore() and not incident.require_approval:
        while settle_one_batch(ctx).cases:
            pass
    while verify_one_batch(ctx, preview=False).cases:
        pass
    if incident.require_approval:
        now, _ = settle_plan(engine, incident, actor, dry_run=False)
    if not now.may_restore() or not restore:
        return state(engine, incident)
    while restore_one_batch(ctx).cases:
        pass
    if incident.require_approval:
        settle_plan(engine, incident, actor, dry_run=False)
    complete_if_done(engine, incident, actor)
    return state(engine, incident)
