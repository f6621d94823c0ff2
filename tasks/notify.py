"""The notify step's batch task: send one batch of due notices over one connection."""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from pydantic import SecretStr

from reinstatement import outbox
from reinstatement.db import get_engine
from reinstatement.incidents import RegisteredIncident
from reinstatement.notices import senders
from reinstatement.notices.backends import backend_from_settings
from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.notices.render import NoticeRenderer
from reinstatement.settings import Settings, load_settings
from tasks.pipeline import BATCH_TASK_OPTIONS, slots

_limiter_lock = threading.Lock()
_limiters: dict[float, RateLimiter] = {}


@lru_cache(maxsize=1)
def renderer() -> NoticeRenderer:
    """One renderer per process: its templates are compiled once."""
    return NoticeRenderer()


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """One limiter per process, shared by every sending thread."""
    rate = settings.notify_rate_per_second
    if not rate:
        return None
    with _limiter_lock:
        if rate not in _limiters:
            _limiters[rate] = RateLimiter(rate, burst=max(1, int(rate // 10)))
        return _limiters[rate]


def smtp_password(settings: Settings) -> SecretStr | None:
    """The SMTP password: from the Prefect Secret block named in settings, if one is."""
    if not settings.smtp_password_block:
        return settings.smtp_password
    from prefect.blocks.system import Secret

    block: Any = Secret.load(settings.smtp_password_block)  # sync in a sync context
    return SecretStr(str(block.get()))


@task(name="send-notices-batch", **BATCH_TASK_OPTIONS)
def send_notices(incident: RegisteredIncident | None, batch_size: int) -> dict[str, Any]:
    """Send one batch of due notices (of one incident, or of all with None)."""
    settings = load_settings()
    engine = get_engine(settings.database_url)
    incident_id = None if incident is None else incident.id
    with slots("smtp", settings.smtp_connections):
        if settings.sender_processes:
            result = senders.send_batch(settings.smtp_connections, smtp_password(settings),
                                        batch_size, incident_id)
        else:
            result = outbox.send_batch(
                engine, backend_from_settings(settings, smtp_password=smtp_password(settings)),
                renderer(), batch_size, sender=settings.email_from,
                lease=timedelta(seconds=settings.notice_lease_seconds),
                incident_id=incident_id, limiter=rate_limiter(settings),
            )
    if result.claimed:
        get_run_logger().info("notices: %d sent, %d to retry, %d failed", result.sent,
                              result.retry, result.failed)
    return {"cases": result.claimed, "sent": result.sent, "retry": result.retry,
            "failed": result.failed}
