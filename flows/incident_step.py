"""One incident on several workers: a step fanned out to child flow runs.

An incident run with `child_runs` N > 1 does not run the batches of verify, restore and
notify itself. For each step it launches N runs of the `incident-step` deployment with
`run_deployment` (on the work pool the deployments are registered to, or on
`reinstate serve`), and each of them, wherever a worker starts it, claims batches of that
step until none is left. The parent waits for all of them, then checks the step's work:

- a child that ended Failed or Cancelled fails the step, as a failed batch does in a
  single run: its error is in the message, and the incident run fails;
- a child whose process died (its worker or its machine went away, SIGKILL) is marked
  Crashed in Prefect: its row in reinstatement_runs says 'running' while nothing holds it
  (on PostgreSQL its advisory lock went with its connection). What it had claimed was
  never committed: its batch transactions rolled back, its notice claims were released
  with its session. The other children take that work as they claim; if work is left
  when all have ended, the parent launches children again for the rest (at most
  `MAX_RELAUNCHES_PER_CHILD` times the number of children per step, then the step fails);
- the step is done when no work of it is left, and only then does the next one start.

A child's results reach the parent through the database, not Prefect's result storage
(which is local to the child's machine): every batch is recorded with where it ran
(reinstatement/batches.py) in the batch's own transaction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import Task, flow
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field
from sqlalchemy import Engine, func, select

from flows.batches import (
    MAX_PARALLEL_TASKS,
    BatchesFailed,
    notices_detail,
    pending,
    run_batches,
    step_progress,
)
from flows.run_state import failed_plainly, tag_run_with_incident
from reinstatement import batches, runs
from reinstatement.errors import BadInput
from reinstatement.incidents import RegisteredIncident, load_incident
from reinstatement.models import Batch, Run
from reinstatement.resources import install, resources
from reinstatement.settings import SettingsError, as_child_of, handed_to_child_runs
from tasks.notify import send_notices
from tasks.pipeline import restore_cases, settle_cases, verify_cases
from tasks.progress import Progress, stopped_by

STEP_FLOW = "incident-step"
STEP_DEPLOYMENT = "incident-step"
STEP_DEPLOYMENT_PATH = f"{STEP_FLOW}/{STEP_DEPLOYMENT}"
MAX_CHILD_RUNS = 32
MAX_RELAUNCHES_PER_CHILD = 3
POLL_SECONDS = 1.0
# A child run a worker took (Pending or Running) but that has not recorded itself in
# reinstatement_runs after this long is taken for dead (its worker died as it started it).
CHILD_START_SECONDS = 300.0
# A child that finished its work (its row says so) but whose Prefect state did not follow
# within this long is taken at its row's word (its process died right after its work).
CHILD_FINISH_SECONDS = 60.0

StepName = Literal["preview", "verify", "settle", "restore", "notify"]


@dataclass(frozen=True)
class Step:
    task: Task[..., dict[str, Any]]
    pending_key: str
    progress_name: str
    task_args: dict[str, Any]


def _step(name: str) -> Step:
    if name == "preview":
        return Step(verify_cases, "preview", "verify", {"preview": True})
    if name == "verify":
        return Step(verify_cases, "verify", "verify", {"preview": False})
    if name == "settle":
        return Step(settle_cases, "verify", "settle", {})
    if name == "restore":
        return Step(restore_cases, "restore", "restore", {})
    if name == "notify":
        return Step(send_notices, "notify", "notify", {})
    raise BadInput(f"step: {name!r} is not one of preview, verify, settle, restore, notify")



# -- the parent's side ----------------------------------------------------------------------

@dataclass(frozen=True)
class StepRunner:
    """How an incident run runs its steps: itself (one child run per step, the default),
    or fanned out to `children` child runs."""

    run_id: int
    batch_size: int
    children: int = 1

    def run(self, incident: RegisteredIncident, step: str) -> dict[str, Any]:
        spec = _step(step)
        if self.children <= 1:
            return run_batches(spec.task, incident, self.batch_size, spec.pending_key,
                               spec.progress_name, run_id=self.run_id, **spec.task_args)
        return fan_out(incident, step, self.batch_size, self.children, self.run_id)


def require_step_deployment(children: int) -> None:
    """Refuse, before anything changes, more than one child run where none can start."""
    if children <= 1:
        return
    if children > MAX_CHILD_RUNS:
        raise BadInput(f"child_runs: {children} is more than {MAX_CHILD_RUNS}")
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(STEP_DEPLOYMENT_PATH)
        except ObjectNotFound:
            raise BadInput(
                f"child_runs: {children} child runs need the {STEP_DEPLOYMENT_PATH} "
                "deployment on this Prefect server: register the deployments on a work "
                "pool with `reinstate deploy` (and start workers), or serve them with "
                "`reinstate serve`") from None


def _launch(incident: RegisteredIncident, step: str, batch_size: int, parent_run_id: int,
            number: int, of: int) -> UUID:
    from prefect.deployments import run_deployment

    flow_run: Any = run_deployment(
        STEP_DEPLOYMENT_PATH,
        parameters={"incident_key": incident.key, "step": step, "batch_size": batch_size,
                    "parent_run_id": parent_run_id,
                    "settings": handed_to_child_runs(resources().settings)},
        flow_run_name=f"{incident.key}: {step} {number} of {of}",
        tags=["reinstatement", incident.key],
        timeout=0,
        as_subflow=True,
    )
    return UUID(str(flow_run.id))


def _child_cases(engine: Engine, parent_run_id: int, step: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.coalesce(func.sum(Batch.cases), 0))
            .join(Run, Run.id == Batch.run_id)
            .where(Run.parent_run_id == parent_run_id, Batch.step == step)
        ).scalar_one())


def _dead_child(engine: Engine, flow_run: Any) -> str | None:
    """Why a child run that Prefect still shows as not ended is dead; None if it lives."""
    state = flow_run.state
    with engine.connect() as conn:
        row = conn.execute(select(Run.id, Run.status, Run.host, Run.pid, Run.finished_at)
                           .where(Run.flow_run_id == str(flow_run.id))).first()
        if row is not None and row.status == "running":
            if runs.is_dead(conn, row.id, row.host, row.pid):
                return (f"its process ({row.pid} on {row.host}) is gone: its worker or "
                        "machine went away")
            return None
    now = datetime.now(UTC)
    if row is not None:
        if row.finished_at is not None and (
                now - row.finished_at).total_seconds() > CHILD_FINISH_SECONDS:
            return f"it ended {row.status} but its process died before telling Prefect"
        return None
    if state is not None and state.type.value in ("PENDING", "RUNNING") and state.timestamp:
        if (now - state.timestamp).total_seconds() > CHILD_START_SECONDS:
            return (f"its worker took it {CHILD_START_SECONDS:.0f} s ago and it never "
                    "started its work")
    return None


def _mark_crashed(client: Any, flow_run_id: UUID, why: str) -> None:
    from prefect.states import Crashed

    try:
        client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
    except Exception as exc:  # noqa: BLE001 - the parent goes on; the UI may lag
        get_run_logger().warning("could not mark child run %s crashed: %s", flow_run_id, exc)


def watch_children(engine: Engine, flow_run_ids: list[UUID],
                   on_poll: Any = None) -> dict[UUID, tuple[str, str]]:
    """Wait until every child run has ended or died; each one's ending (completed, failed,
    cancelled, crashed) and its state message."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    logger = get_run_logger()
    ended: dict[UUID, tuple[str, str]] = {}
    waiting_since = time.monotonic()
    told_waiting = False
    with get_client(sync_client=True) as client:
        while True:
            open_ids = [i for i in flow_run_ids if i not in ended]
            if not open_ids:
                break
            for flow_run in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=open_ids))):
                state = flow_run.state
                if state is not None and state.is_final():
                    kind = state.type.value.lower()
                    ended[flow_run.id] = (kind, state.message or "")
                    continue
                why = _dead_child(engine, flow_run)
                if why is not None:
                    _mark_crashed(client, flow_run.id, why)
                    ended[flow_run.id] = ("crashed", why)
                elif (not told_waiting and state is not None and state.type.value == "SCHEDULED"
                      and time.monotonic() - waiting_since > 30):
                    told_waiting = True
                    logger.warning("child run %s waits for a worker: start `prefect worker "
                                   "start --pool ...` on the deployments' work pool",
                                   flow_run.name)
            if on_poll is not None:
                on_poll()
            if len(ended) < len(flow_run_ids):
                time.sleep(POLL_SECONDS)
    return ended


def fan_out(incident: RegisteredIncident, step: str, batch_size: int, children: int,
            parent_run_id: int) -> dict[str, Any]:
    """Run one step of the incident as up to `children` child runs at once, until no work
    of the step is left; returns the step's totals, summed from the children's batches.
    Its progress card is this run's: it reads the step's work left as the children do it."""
    spec = _step(step)
    remaining = pending(incident, batch_size, spec.pending_key)
    progress = step_progress(incident, batch_size, spec.pending_key, spec.progress_name,
                             remaining)
    try:
        totals = _fan_out(incident, step, batch_size, children, parent_run_id, remaining,
                          progress)
    except BaseException as exc:
        progress.finish(stopped_by(exc))
        raise
    progress.finish(detail=notices_detail(totals) if step == "notify" else None)
    return totals.as_dict()


def _fan_out(incident: RegisteredIncident, step: str, batch_size: int, children: int,
             parent_run_id: int, remaining: int, progress: Progress) -> batches.StepResult:
    logger = get_run_logger()
    spec = _step(step)
    engine = resources().engine
    crashed_total = 0
    seen = _child_cases(engine, parent_run_id, step)

    def advance() -> None:
        nonlocal seen
        now = _child_cases(engine, parent_run_id, step)
        if now > seen:
            progress.advance(now - seen)
            seen = now

    while remaining:
        count = min(children, math.ceil(remaining / batch_size))
        before = seen
        launched = [_launch(incident, step, batch_size, parent_run_id, number, count)
                    for number in range(1, count + 1)]
        logger.info("%s: %d case(s) or notice(s) to do, fanned out to %d child run(s)", step,
                    remaining, count)
        ended = watch_children(engine, launched, advance)
        advance()
        failed = [(kind, message) for kind, message in ended.values()
                  if kind in ("failed", "cancelled", "cancelling")]
        crashed = [message for kind, message in ended.values() if kind == "crashed"]
        if failed:
            raise BatchesFailed(f"{len(failed)} of {count} {step} child runs ended "
                                f"{failed[0][0]}; first: {failed[0][1]}")
        if crashed:
            runs.name_dead_runs(engine)  # their rows say 'crashed' from now on
            crashed_total += len(crashed)
            logger.warning("%d of %d %s child run(s) died (%s); what they held goes to the "
                           "others", len(crashed), count, step, crashed[0])
            if crashed_total > MAX_RELAUNCHES_PER_CHILD * children:
                raise BatchesFailed(f"{crashed_total} {step} child runs died; giving up on "
                                    f"the step (last: {crashed[0]})")
        remaining = pending(incident, batch_size, spec.pending_key)
        if remaining and seen == before and not crashed:
            logger.warning("%d %s cases are being handled by another run", remaining, step)
            break
    with engine.connect() as conn:
        child_ids = list(conn.execute(select(Run.id).where(
            Run.parent_run_id == parent_run_id, Run.step == step)).scalars())
        totals = batches.step_totals(conn, child_ids, step)
    totals.children, totals.children_crashed = len(child_ids), crashed_total
    return totals


# -- the child's side -------------------------------------------------------------------------

def _step_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return (f"{parameters.get('incident_key') or 'incident'}: "
            f"{parameters.get('step') or 'step'} (child of run {parameters.get('parent_run_id')})")


@flow(
    name=STEP_FLOW,
    description="One step of an incident run, as one of its child runs: claims batches of "
    "the step until none is left. Launched by the incident run (child_runs > 1).",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
    flow_run_name=_step_run_name,
)
def incident_step(
    incident_key: Annotated[str, Field(min_length=1, max_length=200)],
    step: StepName,
    parent_run_id: Annotated[int, Field(ge=1)],
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000,
    settings: dict[str, Any] | None = None,
) -> Any:
    """Claim and run batches of one step of an incident until none is left.

    Args:
        incident_key: The incident's key.
        step: preview, verify, settle (verify and restore in one pass), restore or notify.
        parent_run_id: The incident run (reinstatement_runs.id) this child works for.
        batch_size: Cases or notices per batch task, 1 to 50,000.
        settings: The incident run's settings, which this run works with (its database
            must be this process's; passwords stay in each process's environment).
    """
    try:
        if settings is not None:
            try:
                install(as_child_of(resources().settings, settings))
            except SettingsError as exc:
                raise BadInput(str(exc)) from None
        engine = resources().engine
        with engine.connect() as conn:
            incident = load_incident(conn, incident_key)
            parent = conn.execute(select(Run.incident_id, Run.parent_run_id)
                                  .where(Run.id == parent_run_id)).first()
        if parent is None or parent.incident_id != incident.id or parent.parent_run_id:
            raise BadInput(f"parent_run_id: {parent_run_id} is not a run of incident "
                           f"{incident_key}")
        spec = _step(step)
    except BadInput as exc:
        return failed_plainly(exc)
    tag_run_with_incident(incident_key)
    from prefect.runtime import flow_run

    flow_run_id = flow_run.get_id()
    run_id = runs.start_run(engine, incident.id, str(flow_run_id) if flow_run_id else None,
                            dry_run=step == "preview", parent_run_id=parent_run_id, step=step)
    started, status = time.perf_counter(), "failed"
    try:
        totals = run_batches(spec.task, incident, batch_size, spec.pending_key,
                             spec.progress_name, run_id=run_id, publish_progress=False,
                             **spec.task_args)
        status = "completed"
        get_run_logger().info("%s: %d done here", step, totals["cases"])
        return totals
    finally:
        runs.finish_run(engine, run_id, status, {step: time.perf_counter() - started})
