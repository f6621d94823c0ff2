"""The notify step's batch task: send one batch of due notices over one connection."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from reinstatement import batches, outbox
from reinstatement.incidents import RegisteredIncident
from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.resources import resources
from reinstatement.retrying import in_transaction
from reinstatement.settings import Settings
from tasks import limits, senders
from tasks.pipeline import BATCH_TASK_OPTIONS


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """The pace of sending for this process: the global rate limit reinstatement-mail-rate
    (when it exists) and REINSTATE_NOTIFY_RATE_PER_SECOND (when set), shared by every
    sending thread."""
    return limits.mail_rate()


def _on_a_server() -> bool:
    """The global limits live on a Prefect server: one is configured."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def send_case_notices(incident_id: int, case_ids: list[int]) -> outbox.SendResult:
    """Send the notices of these cases now (a reviewer's reinstatement, from the command
    line or the review flow) with the notify step's backend, secret and limits: a slot of
    reinstatement-smtp-connections and the mail rate, where a Prefect server holds them."""
    process = resources()
    settings, engine = process.settings, process.engine
    on_server = _on_a_server()
    with limits.smtp_connection() if on_server else nullcontext():
        return outbox.send_batch(
            engine, process.email_backend(), process.renderer, max(len(case_ids), 1),
            sender=settings.email_from,
            lease=timedelta(seconds=settings.notice_lease_seconds),
            incident_id=incident_id, case_ids=case_ids,
            limiter=rate_limiter(settings) if on_server else None)


@task(name="send-notices-batch", **BATCH_TASK_OPTIONS)
def send_notices(incident: RegisteredIncident | None, batch_size: int,
                 run_id: int | None = None) -> dict[str, Any]:
    """Send one batch of due notices (of one incident, or of all with None).

    The batch holds a slot of the global limit reinstatement-smtp-connections for as long
    as its connection is open, and each notice takes one of reinstatement-mail-rate.
    """
    process = resources()
    settings, engine = process.settings, process.engine
    incident_id = None if incident is None else incident.id
    with limits.smtp_connection():
        if settings.sender_processes:
            result = senders.send_batch(settings.smtp_connections, process.smtp_password,
                                        batch_size, incident_id,
                                        limiter_factory=limits.mail_rate,
                                        limiter_args=(limits.mail_rate_limit(),))
        else:
            result = outbox.send_batch(
                engine, process.email_backend(), process.renderer, batch_size,
                sender=settings.email_from,
                lease=timedelta(seconds=settings.notice_lease_seconds),
                incident_id=incident_id, limiter=rate_limiter(settings),
            )
    detail = batches.StepResult(cases=result.claimed, batches=1, sent=result.sent,
                                retry=result.retry, failed=result.failed).as_dict()
    if result.claimed:
        get_run_logger().info("notices: %d sent, %d to retry, %d failed", result.sent,
                              result.retry, result.failed)
        if run_id is not None and incident is not None:
            in_transaction(engine, lambda conn: batches.record_batch(
                conn, run_id, incident.id, "notify", result.claimed, detail))
    return detail
