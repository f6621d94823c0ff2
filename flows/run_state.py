"""How a flow run presents itself: its incident's tag, and a plain end for bad input.

Shared by the incident flow, its child step runs and the review flow.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.exceptions import Abort
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Failed, State

from reinstatement.errors import BadInput
from reinstatement.wording import sentence


def tag_run_with_incident(key: str) -> None:
    """Tag this flow run with the incident key, so the UI's run list filters by incident."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return
    run_id = UUID(str(flow_run_id))
    try:
        with get_client(sync_client=True) as client:
            tags = set(client.read_flow_run(run_id).tags) | {"reinstatement", key}
            client.update_flow_run(run_id, tags=sorted(tags))
    except Exception as exc:  # noqa: BLE001 - a missing tag must not stop a reinstatement
        get_run_logger().warning("could not tag the run with %s: %s", key, exc)


class RefusedRun(BadInput, Abort):
    """Bad input that ended a run Failed, carried as the state's data.

    A caller in this process (the CLI) gets it back as a `BadInput`: exit status 2.
    In a deployment run, Prefect's engine raises a failed state's data after the run ends
    and logs any `Exception` it raises with its traceback into the run's logs; an `Abort`
    it lets through quietly, and the run's process ends. So bad input shows in the UI as
    the one plain line below, not as a traceback (tests/test_deployments.py checks it).
    """


def failed_plainly(exc: BadInput) -> State[Any]:
    """The run's end for bad input: one error line in the log, the same text as the
    state's message, and the error itself for a caller in this process (the CLI)."""
    get_run_logger().error("%s", exc)
    return Failed(message=str(exc), data=RefusedRun(str(exc)))


class NoticesFailed(RuntimeError):
    """A run left notices failed for good: it ends Failed, never Completed."""


def failed_for_notices(message: str) -> State[Any]:
    """The run's end when notices failed for good: the count and reasons as one error
    line and the state's message; the CLI exits 1 with it."""
    get_run_logger().error("%s", message)
    return Failed(message=message, data=NoticesFailed(message))


class RejectedRun(Abort):
    """An operator rejected the incident's plan: the run ends Cancelled, named Rejected.

    An `Abort`, as `RefusedRun` is, so that Prefect's engine logs the end at INFO with no
    traceback: a rejection is a decision, not a crash."""


def rejected(incident_key: str, message: str) -> State[Any]:
    """The run's end when an operator rejected the plan it waited on; `message` says who
    and why."""
    get_run_logger().info("incident %s %s Nothing was restored, and nothing will be "
                          "under this key.", incident_key, sentence(message))
    return Cancelled(name="Rejected", message=message, data=RejectedRun(message))


_ENDINGS = {"cancelled": "the run was cancelled", "crashed": "the run crashed"}


def on_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """An incident's run ended Failed (bad input, notices failed for good, a step that
    kept failing): the event `reinstatement.incident.failed`, for the operators' alerts."""
    from tasks.events import emit_run_failed

    key = _incident_key(flow_run.parameters)
    if key:
        emit_run_failed(key, flow_run, state)


def _ended_by_prefect(status: str) -> Any:
    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        """Where Prefect ended the run from outside (Cancel in the UI, a crash): its runs
        say so, no progress card of it is left mid-way (each says where its step stopped,
        counted now), and the incident's report is published again as the database has it.
        A crash is a failure of the incident's run, announced as one.

        This runs where Prefect runs it: in the run's own process, or, for a run a worker
        or `reinstate serve` started, in theirs once the run's process has ended."""
        from flows.batches import remaining_of
        from reinstatement import runs
        from reinstatement.resources import resources
        from tasks.progress import finish_progress_left_open
        from tasks.reporting import publish_report

        key = _incident_key(flow_run.parameters)
        if key and status == "crashed":
            on_failed(flow, flow_run, state)
        try:
            finish_progress_left_open(flow_run.id, _ENDINGS[status], remaining_of)
        except Exception as exc:  # noqa: BLE001 - the run's row and report come next
            logging.getLogger(__name__).warning("could not finish the progress cards of "
                                                "the %s run of %s: %s", status,
                                                key or "an incident", exc)
        try:
            runs.record_ended_by_prefect(resources().engine, str(flow_run.id), status)
            if key:
                publish_report.fn(key)
        except Exception as exc:  # noqa: BLE001 - a hook must not hide the run's own end
            logging.getLogger(__name__).warning("could not record the %s run of %s: %s",
                                                status, key or "an incident", exc)

    return hook


def _incident_key(parameters: dict[str, Any]) -> str | None:
    request = parameters.get("request")
    if isinstance(request, dict):
        return request.get("incident_key")
    key = getattr(request, "incident_key", None) or parameters.get("incident_key")
    return str(key) if key else None


on_cancelled = _ended_by_prefect("cancelled")
on_crashed = _ended_by_prefect("crashed")
