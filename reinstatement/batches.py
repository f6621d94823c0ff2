"""Where each batch ran: one row per batch, with the worker, host and process that ran it.

A verify or restore batch writes its row in its own transaction, so the rows count
exactly the batches that committed: a batch that rolled back (its process killed, say)
leaves none, and its cases are claimed again by whoever runs next. A notify batch writes
its row after its notices are sent (each notice's state is committed as it is sent); a
sender killed mid-batch leaves no row for that batch.

The rows are also how an incident run learns what its child runs did: a child may run on
another machine, and its Prefect result is not stored where the parent can read it, but
the database is shared.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select

from reinstatement.holders import this_process
from reinstatement.models import Batch, Run
from reinstatement.store.engine import utcnow

# Set by a Prefect worker in the environment of each flow run it starts.
WORKER_NAME_VARIABLE = "PREFECT__WORKER_NAME"


def worker_name() -> str | None:
    """The Prefect worker that started this process's flow run (None: no worker, e.g. a
    run from the CLI or `reinstate serve`)."""
    return os.environ.get(WORKER_NAME_VARIABLE) or None


def record_batch(conn: Connection, run_id: int, incident_id: int, step: str, cases: int,
                 detail: dict[str, Any]) -> None:
    """Record one batch of `step` that this process executed for the run `run_id`."""
    host, pid = this_process()
    conn.execute(insert(Batch).values(
        run_id=run_id, incident_id=incident_id, step=step, cases=cases, detail=detail,
        worker=worker_name(), host=host, pid=pid, finished_at=utcnow()))


@dataclass
class StepResult:
    """What a batch, or a whole step, came to: the one shape of a step's result, whether a
    batch task returns it, a run sums its batches, or a parent sums its child runs' from
    the database. Every field is always there (0 when the step had nothing to do)."""

    cases: int = 0  # cases (or notices, for notify) the step's batches took
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    pins_restored: int = 0
    notices_queued: int = 0
    changed_since_verification: int = 0
    restored: int = 0  # accounts a settle batch restored (outcomes counts its verdicts)
    sent: int = 0
    retry: int = 0
    failed: int = 0
    children: int = 0  # child runs, for a step fanned out
    children_crashed: int = 0

    def add(self, detail: Mapping[str, Any]) -> None:
        """Add one batch's result (or another step's), as `as_dict` wrote it."""
        for name, value in detail.items():
            if name == "outcomes" and isinstance(value, Mapping):
                self.outcomes.update({str(k): int(v) for k, v in value.items()})
            elif name in _NUMBERS and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)
        if "batches" not in detail:
            self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (what Prefect tasks return and reinstatement_batches holds)."""
        result = asdict(self)
        result["outcomes"] = dict(self.outcomes)
        return result


_NUMBERS = frozenset(f.name for f in fields(StepResult) if f.name != "outcomes")


def step_totals(conn: Connection, run_ids: Sequence[int], step: str) -> StepResult:
    """What the batches of `step` run by these runs came to, summed as the flow sums them."""
    totals = StepResult()
    if not run_ids:
        return totals
    for cases, detail in conn.execute(
        select(Batch.cases, Batch.detail).where(Batch.run_id.in_(list(run_ids)),
                                                Batch.step == step)
    ):
        totals.add({**(detail or {}), "cases": cases})
    return totals


def where_batches_ran(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Per worker process of an incident run (itself and its child runs), per step: how
    many batches and cases it executed. Ordered by host, process and step."""
    rows = conn.execute(
        select(Batch.worker, Batch.host, Batch.pid, Run.flow_run_id, Batch.step,
               func.count(), func.sum(Batch.cases))
        .join(Run, Run.id == Batch.run_id)
        .where(or_(Run.id == run_id, Run.parent_run_id == run_id))
        .group_by(Batch.worker, Batch.host, Batch.pid, Run.flow_run_id, Batch.step)
        .order_by(Batch.host, Batch.pid, Batch.step)
    ).all()
    return [
        {"worker": worker, "host": host, "pid": pid, "flow_run_id": flow_run_id,
         "step": step, "batches": int(batches), "cases": int(cases or 0)}
        for worker, host, pid, flow_run_id, step, batches, cases in rows
    ]
