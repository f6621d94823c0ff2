"""Runs suspended for an operator's decision that Prefect ended meanwhile.

Cancelling a suspended run (⋮ → Cancel in the UI) runs no code of ours: Prefect's server
moves it straight to Cancelled, since no process holds it. So whoever looks next finds
out: `reinstate serve` every minute, the nightly reconciliation, the incident's next run,
and the commands that show incidents. The run's row then says what Prefect did and when
(`cancelled`, `crashed`, `failed`), and the incident, still awaiting approval, says that
no run waits for its decision in the UI any more and how to go on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE

from reinstatement import runs
from reinstatement.resources import resources

log = logging.getLogger(__name__)

# How each final Prefect state of a waiting run reads in the runs table.
_ENDED_AS = {"CANCELLED": "cancelled", "CANCELLING": "cancelled", "CRASHED": "crashed",
             "FAILED": "failed", "COMPLETED": runs.RESUMED}


def _prefect_ends(flow_run_ids: list[str]) -> dict[str, tuple[str, datetime | None]]:
    """For each waiting run Prefect no longer holds suspended: how it ended, and when."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = []
    for flow_run_id in flow_run_ids:
        try:
            ids.append(UUID(flow_run_id))
        except ValueError:
            continue
    if not ids:
        return {}
    with get_client(sync_client=True) as client:
        found = {str(run.id): run for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))}
    ended: dict[str, tuple[str, datetime | None]] = {}
    for flow_run_id in map(str, ids):
        run = found.get(flow_run_id)
        if run is None:  # deleted from Prefect: nobody can resume it
            ended[flow_run_id] = ("cancelled", None)
            continue
        state = run.state
        if state is not None and state.type.value in _ENDED_AS:
            ended[flow_run_id] = (_ENDED_AS[state.type.value], state.timestamp)
    return ended


def record_ended_waits(publish: bool = True) -> list[str]:
    """Name the waiting runs Prefect ended (their rows, with Prefect's time) and publish
    their incidents' preview and report again (`publish`, in a flow run or `serve`); the
    keys of the incidents concerned. Reading Prefect may fail (no server): nothing
    changes then, and the next look tries again."""
    from reinstatement.models import Incident

    engine = resources().engine
    with engine.connect() as conn:
        waiting = runs.waiting_runs(conn)
    if not waiting:
        return []
    try:
        ended = _prefect_ends([flow_run_id for _, flow_run_id in waiting])
    except Exception as exc:  # noqa: BLE001 - no Prefect to ask: the next look asks again
        log.warning("could not read the state of the runs waiting for a decision: %s", exc)
        return []
    incident_ids = set()
    for incident_id, flow_run_id in waiting:
        if flow_run_id in ended:
            status, at = ended[flow_run_id]
            runs.record_ended_by_prefect(engine, flow_run_id, status, at)
            incident_ids.add(incident_id)
    if not incident_ids:
        return []
    from sqlalchemy import select

    with engine.connect() as conn:
        keys = sorted(conn.execute(select(Incident.key).where(
            Incident.id.in_(incident_ids))).scalars())
    for key in keys:
        log.warning("incident %s: the run waiting for its decision ended in Prefect; it "
                    "still awaits approval (`reinstate approve %s`, or start its deployment "
                    "again to decide in the UI)", key, key)
        if publish:
            _publish(key)
    return keys


def _publish(key: str) -> None:
    from tasks.reporting import publish_preview, publish_report

    try:
        report: dict[str, Any] = publish_report.fn(key)
        if report.get("status") == "awaiting_approval":
            publish_preview.fn(key, dry_run=False)
    except Exception as exc:  # noqa: BLE001 - the rows already say it; the artifacts follow
        log.warning("could not publish the report of %s again: %s", key, exc)


@task(name="record-ended-waits", cache_policy=NO_CACHE)
def ended_waits() -> list[str]:
    """The runs waiting for a decision that Prefect ended (a Cancel in the UI): recorded,
    their incidents' reports published again; the incident keys."""
    return record_ended_waits()
