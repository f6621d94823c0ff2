"""Sending notices from child processes, one SMTP connection (or outbox folder) each.

One process's sending is bound by its CPU: each notice is rendered, handed over and its
state committed before the next one, all under one GIL, so a second thread adds little
(bench/RESULTS.md has the figures). With `REINSTATE_SENDER_PROCESSES` on, every sending
slot of the notify step hands its batch to its own child process instead, which claims,
renders, sends and records exactly as `outbox.send_batch` does in-process: the same
claim under a session-held advisory lock, the same commit per notice before the next
send. So the exactly-once guarantee is the same: a kill leaves at most the one notice
in flight per child (per connection), resent later with the same Message-ID.

The children are started with `spawn` (a forked copy of a threaded flow process could
inherit a held lock) and watch their parent: when it dies (SIGKILL included) they stop
within a fraction of a second, rather than send on for a run that is gone. A change of
the REINSTATE_* environment (or of the SMTP password) starts fresh children.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from pydantic import SecretStr

from reinstatement.outbox import SendResult

_PARENT_CHECK_SECONDS = 0.2

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_key: str | None = None

# In a child: what it sends with, made once.
_child: dict[str, Any] = {}


def _prefect_api_url() -> str | None:
    """The Prefect API this process talks to, for children that pace by its limits.

    A child inherits the environment only: a run whose API is not in it (a local run on
    the temporary server it started, or a test server) would have each child start a
    temporary server of its own, seconds each and past Prefect's start-up limit on a busy
    machine, and pace by limits nobody else shares.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the temporary server already running
        return str(client.api_url)


def _environment_key(processes: int, password: SecretStr | None,
                     limiter_factory: Callable[..., Any] | None, api_url: str | None) -> str:
    digest = hashlib.sha256(repr(sorted(
        (k, v) for k, v in os.environ.items() if k.startswith(("REINSTATE_", "PREFECT_"))
    )).encode())
    digest.update(repr((processes, getattr(limiter_factory, "__qualname__", None),
                        api_url)).encode())
    if password is not None:
        digest.update(password.get_secret_value().encode())
    return digest.hexdigest()


def pool(processes: int, password: SecretStr | None,
         limiter_factory: Callable[..., Any] | None = None) -> ProcessPoolExecutor:
    """The sender processes for these settings (started on first use)."""
    global _pool, _pool_key
    api_url = _prefect_api_url() if limiter_factory is not None else None
    key = _environment_key(processes, password, limiter_factory, api_url)
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(os.getpid(), password, processes, limiter_factory, api_url))
            _pool_key = key
        return _pool


def shutdown() -> None:
    """Stop the sender processes (each finishes the batch it is sending first)."""
    global _pool, _pool_key
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_key = None, None


atexit.register(shutdown)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # the run that asked for these sends is gone: stop at once
        time.sleep(_PARENT_CHECK_SECONDS)


def _start_child(parent: int, password: SecretStr | None, processes: int,
                 limiter_factory: Callable[..., Any] | None, api_url: str | None) -> None:
    if api_url:
        # Before anything here imports Prefect, which reads its settings once.
        os.environ["PREFECT_API_URL"] = api_url
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="watch-parent").start()
    from reinstatement.notices.ratelimit import RateLimiter
    from reinstatement.notices.render import NoticeRenderer
    from reinstatement.resources import backend_from_settings, resources

    settings = resources().settings
    rate = settings.notify_rate_per_second  # per process, as for a flow's own process
    _child.update(
        settings=settings, engine=resources().engine,
        backend=lambda: backend_from_settings(settings, smtp_password=password),
        renderer=NoticeRenderer(),
        limiter=RateLimiter(rate, burst=max(1, int(rate // 10))) if rate else None,
        limiter_factory=limiter_factory,
    )


def _send_in_child(batch_size: int, incident_id: int | None,
                   limiter_args: tuple[Any, ...] = ()) -> dict[str, int]:
    from reinstatement import outbox

    settings = _child["settings"]
    factory = _child["limiter_factory"]
    result = outbox.send_batch(
        _child["engine"], _child["backend"](), _child["renderer"], batch_size,
        sender=settings.email_from, lease=timedelta(seconds=settings.notice_lease_seconds),
        incident_id=incident_id,
        # The caller's pacer (the global mail rate, as the caller read it), else this
        # process's share of REINSTATE_NOTIFY_RATE_PER_SECOND.
        limiter=factory(*limiter_args) if factory else _child["limiter"])
    return asdict(result)


def send_batch(processes: int, password: SecretStr | None, batch_size: int,
               incident_id: int | None,
               limiter_factory: Callable[..., Any] | None = None,
               limiter_args: tuple[Any, ...] = ()) -> SendResult:
    """Send one batch of due notices from a sender process; its result, or its error.

    `limiter_factory`: a module-level function the children call before each batch, with
    `limiter_args`, for their pacer (tasks.limits.mail_rate: the global mail rate of the
    Prefect server, which the caller reads and passes on).
    """
    future = pool(processes, password, limiter_factory).submit(
        _send_in_child, batch_size, incident_id, limiter_args)
    return SendResult(**future.result())
