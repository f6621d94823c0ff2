"""The pipeline's Prefect events: the name of every event an operator's automation can
listen for, and the one place that emits them.

Milestones only, never one event per case or notice:

| event | when |
| --- | --- |
| `reinstatement.incident.registered` | an incident key is declared |
| `reinstatement.incident.previewed` | a dry run previewed it |
| `reinstatement.incident.awaiting-approval` | its plan waits for an operator's decision |
| `reinstatement.incident.approved`, `.rejected` | an operator decided on its plan |
| `reinstatement.incident.running` | restoring began (or began again: a new round, a review) |
| `reinstatement.incident.completed` | every case settled, every notice settled |
| `reinstatement.incident.failed` | a run of the incident ended Failed or Crashed |
| `reinstatement.incident.notices-failed` | a run left notices failed for good: count, per reason |
| `reinstatement.reconciliation.invariants-broken` | the nightly found breaks it may not repair |
| `reinstatement.fault.suspected` | fault detection found a new suspect rule version |

An incident's event has the incident as its resource, `reinstatement.incident.<KEY>`
(`prefect.resource.name`: the key), and names it again as a related resource in the role
`incident`; Prefect adds the run that emitted it (flow run, flow, deployment, tags).

The status events mirror the audit trail: `announcing_transitions` wraps a step that may
move incidents and, once it is done, emits one event per transition the step committed,
as the trail records it (so a transition is announced once, by the process that made it,
and never one that was rolled back).

Emitting is best effort: Prefect sends events in the background, and an event that cannot
be sent, or a server that refuses it, never fails a run; a warning says so (Prefect's
events worker logs what the server answered). A process with no Prefect server to talk to
(the CLI without PREFECT_API_URL, outside a flow run) emits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prefect.events import emit_event

from reinstatement import lifecycle
from reinstatement.incident_states import IncidentStatus, Transition
from reinstatement.resources import resources

INCIDENT = "reinstatement.incident"
TRANSITION_EVENTS: dict[IncidentStatus, str] = {
    status: f"{INCIDENT}.{status.value.replace('_', '-')}" for status in IncidentStatus}
REGISTERED = TRANSITION_EVENTS[IncidentStatus.REGISTERED]
AWAITING_APPROVAL = TRANSITION_EVENTS[IncidentStatus.AWAITING_APPROVAL]
APPROVED = TRANSITION_EVENTS[IncidentStatus.APPROVED]
REJECTED = TRANSITION_EVENTS[IncidentStatus.REJECTED]
RUNNING = TRANSITION_EVENTS[IncidentStatus.RUNNING]
COMPLETED = TRANSITION_EVENTS[IncidentStatus.COMPLETED]
RUN_FAILED = f"{INCIDENT}.failed"
NOTICES_FAILED = f"{INCIDENT}.notices-failed"
INVARIANTS_BROKEN = "reinstatement.reconciliation.invariants-broken"
FAULT_SUSPECTED = "reinstatement.fault.suspected"
# The role the incident takes among an event's related resources.
INCIDENT_ROLE = "incident"

logger = logging.getLogger("reinstatement.events")


def incident_resource_id(key: str) -> str:
    return f"{INCIDENT}.{key}"


def incident_resource(key: str) -> dict[str, str]:
    """The incident as an event's resource."""
    return {"prefect.resource.id": incident_resource_id(key), "prefect.resource.name": key}


def incident_related(key: str) -> list[dict[str, str]]:
    """The incident as a related resource, in the role `incident`."""
    return [{**incident_resource(key), "prefect.resource.role": INCIDENT_ROLE}]


def _warn(message: str, *args: Any) -> None:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        run_logger: Any = get_run_logger()
    except MissingContextError:
        run_logger = logger
    run_logger.warning(message, *args)


def _connected() -> bool:
    """Whether there is a Prefect server to send events to: PREFECT_API_URL, or the server
    this flow run talks to (a temporary one included). Elsewhere emitting would start a
    temporary server only to drop the event."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value() or FlowRunContext.get() or TaskRunContext.get())


def emit(event: str, resource: dict[str, str], *,
         related: list[dict[str, str]] | None = None,
         payload: Mapping[str, Any] | None = None) -> bool:
    """Send one event, best effort: whether it was handed to Prefect's events worker. A
    failure is a warning, never an error of the run."""
    try:
        if not _connected():
            return False
        sent = emit_event(event=event, resource=resource, related=related,
                          payload=dict(payload) if payload is not None else None)
    except Exception as exc:  # noqa: BLE001 - an event must never fail a reinstatement
        _warn("the Prefect event %s could not be emitted: %s", event, exc)
        return False
    if sent is None:
        _warn("the Prefect event %s could not be emitted (see Prefect's log above)", event)
        return False
    return True


def emit_incident(event: str, key: str, payload: Mapping[str, Any]) -> bool:
    """An incident's event: the incident as resource and as related resource."""
    return emit(event, incident_resource(key), related=incident_related(key),
                payload={"incident": key, **payload})


def announce(transitions: list[Transition]) -> None:
    """One event per transition, named for the status it reached."""
    for moved in transitions:
        emit_incident(TRANSITION_EVENTS[moved.to], moved.key, {
            "from": moved.from_status, "to": str(moved.to), "actor": moved.actor,
            "reason": moved.reason, "at": moved.at.isoformat()})


@contextmanager
def announcing_transitions(*, actor: str | None, incident_id: int | None = None
                           ) -> Iterator[None]:
    """Emit an event for each incident transition that the block commits (by `actor`, of
    one incident, where given), as the audit trail records it; see the module's docstring.
    Transitions committed before the block raised are announced too."""
    if not _connected():
        yield
        return
    engine = resources().engine
    try:
        with engine.connect() as conn:
            mark: int | None = lifecycle.audit_mark(conn)
    except Exception as exc:  # noqa: BLE001 - the block itself will say what is wrong
        _warn("incident events: could not read the audit trail: %s", exc)
        mark = None
    try:
        yield
    finally:
        if mark is not None:
            try:
                with engine.connect() as conn:
                    moved = lifecycle.transitions_since(conn, mark, incident_id=incident_id,
                                                        actor=actor)
            except Exception as exc:  # noqa: BLE001 - never hide the block's own outcome
                _warn("incident events: could not read the transitions to announce: %s",
                      exc)
            else:
                announce(moved)


def emit_run_failed(key: str, flow_run: Any, state: Any) -> bool:
    """A run of the incident ended Failed or Crashed."""
    return emit_incident(RUN_FAILED, key, {
        "flow_run": str(flow_run.id), "flow_run_name": flow_run.name,
        "state": state.name, "message": state.message or ""})


def emit_notices_failed(key: str, counts: Mapping[str, int], *,
                        total: Mapping[str, int] | None = None) -> bool:
    """A run left notices failed for good: `counts` per reason; `total`, where this run's
    failures are only some of those the incident has."""
    payload: dict[str, Any] = {"count": sum(counts.values()), "by_reason": dict(counts)}
    if total is not None:
        payload["incident_total"] = sum(total.values())
        payload["incident_by_reason"] = dict(total)
    return emit_incident(NOTICES_FAILED, key, payload)


def emit_invariants_broken(invariants: Mapping[str, Any], dry_run: bool) -> bool:
    """The nightly found invariant breaks it must not repair by itself; the counts and the
    first cases of each kind."""
    samples = 20
    return emit(INVARIANTS_BROKEN, {"prefect.resource.id": "reinstatement.reconciliation",
                                    "prefect.resource.name": "nightly reconciliation"},
                payload={
                    "unrepaired": invariants["unrepaired"], "dry_run": dry_run,
                    "banned_without_cause": len(invariants["banned_without_cause"]),
                    "notices_without_reinstatement":
                        len(invariants["notices_without_reinstatement"]),
                    "pins_left_hidden": len(invariants["pins_left_hidden"]),
                    "pins_repaired": invariants["pins_repaired"],
                    "sample_cases": sorted({row["case_id"] for kind in (
                        "banned_without_cause", "notices_without_reinstatement")
                        for row in invariants[kind]})[:samples]})


def emit_fault_suspected(suspect: Mapping[str, Any]) -> bool:
    """A new suspect rule version (reinstatement/detection.py); its resource is the
    version, `reinstatement.rule-version.<NAME@V>`."""
    return emit(FAULT_SUSPECTED, {
        "prefect.resource.id": f"reinstatement.rule-version.{suspect['version']}",
        "prefect.resource.name": suspect["version"],
        "reinstatement.version": suspect["version"]}, payload=suspect)
