"""Resending notices that failed for good, from the Prefect UI: the same as
`reinstate notices resend KEY [--reason R] [--since T]`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.batches import MAX_PARALLEL_TASKS, run_batches
from flows.run_state import failed_for_notices, failed_plainly, tag_run_with_incident
from reinstatement.errors import BadInput
from reinstatement.failed_notices import describe
from tasks.events import emit_notices_failed
from tasks.incident_state import (
    failed_notices,
    load_registered,
    plain,
    requeue_failed_notices,
)
from tasks.notify import send_notices


def _resend_run_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.parameters.get('incident_key') or 'incident'}: resend notices"


@flow(name="resend-notices", description="Queue an incident's failed notices again, with "
      "the Message-IDs they were given, and send them.",
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
      flow_run_name=_resend_run_name)
def resend_notices(
    incident_key: Annotated[str, Field(min_length=1, max_length=200)],
    reason: Annotated[str | None, Field(max_length=20)] = None,
    since: datetime | None = None,
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000,
) -> Any:
    """Queue the incident's failed notices again and send them; the run fails if any
    fails again.

    Args:
        incident_key: The incident whose failed notices to send again.
        reason: Only those that failed for this reason: a reply code (550), a class (5xx,
            4xx) or not-sendable. Empty: every failed notice.
        since: Only those that failed at or after this moment (UTC).
        batch_size: Notices per batch task.
    """
    try:
        tag_run_with_incident(incident_key)
        incident = plain(load_registered(incident_key))
        queued = plain(requeue_failed_notices(incident, reason, since))
        get_run_logger().info("incident %s: %d failed notice(s) queued again with their "
                              "Message-IDs", incident_key, queued)
        sent = run_batches(send_notices, incident, batch_size, "notify", "notify") \
            if queued else {}
        still = failed_notices(incident)
        if still:
            emit_notices_failed(incident_key, still)
            return failed_for_notices(f"incident {incident_key}: {describe(still)}")
        return {"incident": incident_key, "queued": queued, "sent": sent.get("sent", 0)}
    except BadInput as exc:
        return failed_plainly(exc)
