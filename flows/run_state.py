"""How a flow run presents itself: its incident's tag, and a plain end for bad input.

Shared by the incident flow, its child step runs and the review flow.
"""

from __future__ import annotations

from typing import Any

from prefect.exceptions import Abort
from prefect.logging import get_run_logger
from prefect.states import Failed, State

from reinstatement.errors import BadInput


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
