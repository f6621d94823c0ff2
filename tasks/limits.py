"""Limits that hold across processes and machines: Prefect's global concurrency limits.

Three limits, on the Prefect server, shared by every run, child run, worker and machine
that talks to it (`reinstate deploy` creates them with the defaults below; an operator can
change them in the UI, under Concurrency, or with `prefect gcl update`):

- `reinstatement-database-batches`: verify and restore batches running at once. Each is
  one transaction that locks its cases (and, for a restore, the accounts); past a few at
  once they only queue on PostgreSQL's locks and WAL.
- `reinstatement-smtp-connections`: SMTP connections open at once. A notify batch holds a
  slot for as long as its connection is open.
- `reinstatement-mail-rate`: the mail provider's rate, a rate limit (a limit whose slots
  decay): every notice sent takes one slot. Senders take them in chunks of a tenth of a
  second's worth, so the server is asked ten times a second at most, whatever the rate.

A slot is held under a lease (REINSTATE_LIMIT_LEASE_SECONDS, 60 by default, Prefect's
minimum) that the holder renews while it works: when a process dies holding one, the
server frees it within the lease and 15 s.

When a limit does not exist (a run on Prefect's temporary server, or a server where
`reinstate deploy` never ran), nothing waits for it: the run logs once that the limit is
missing and goes on limited only by its own settings, REINSTATE_WORKERS batches and
REINSTATE_SMTP_CONNECTIONS connections at once, and REINSTATE_NOTIFY_RATE_PER_SECOND per
process. That is deliberate: a run without a server, or one started before the limits
were created, must neither hang nor fail; across several processes, create the limits.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.resources import resources

DATABASE_BATCHES = "reinstatement-database-batches"
SMTP_CONNECTIONS = "reinstatement-smtp-connections"
MAIL_RATE = "reinstatement-mail-rate"

DEFAULT_DATABASE_BATCHES = 4
DEFAULT_SMTP_CONNECTIONS = 2
DEFAULT_MAIL_RATE = 200.0  # notices per second, across every sender

# How long what was read about a limit stands: a long-lived process sees a limit created
# (or changed) after it started within this time.
KNOWN_FOR_SECONDS = 30.0

logger = logging.getLogger("reinstatement.limits")


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    slot_decay_per_second: float
    active: bool


_known_lock = threading.Lock()
_known: dict[str, tuple[float, Limit | None]] = {}
_warned: set[str] = set()


def forget_known_limits() -> None:
    """Read every limit from the server again on next use (tests, a changed server)."""
    with _known_lock:
        _known.clear()
        _warned.clear()


def read_limit(name: str) -> Limit | None:
    """The limit as the Prefect server has it now (read at most every 30 s); None if it
    does not exist."""
    now = time.monotonic()
    with _known_lock:
        cached = _known.get(name)
        if cached is not None and now - cached[0] < KNOWN_FOR_SECONDS:
            return cached[1]
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
        else:
            limit = Limit(found.name, int(found.limit),
                          float(found.slot_decay_per_second or 0.0), bool(found.active))
    with _known_lock:
        _known[name] = (now, limit)
    if limit is None:
        _warn_missing(name)
    return limit


def _warn_missing(name: str) -> None:
    with _known_lock:
        if name in _warned:
            return
        _warned.add(name)
    message = (f"global concurrency limit {name} does not exist on the Prefect server: not "
               "limited across processes, only by this run's settings (`reinstate serve` "
               "and `reinstate deploy` create it)")
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 - outside a run: the module's logger
        logger.warning(message)


def _holder() -> Any:
    """Who holds a slot, as Prefect's UI shows it: this task run (or flow run)."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run, task_run

    if task_run.id:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.id)
    if flow_run.id:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id)
    return None


@contextmanager
def slot(name: str) -> Iterator[None]:
    """Hold one slot of the global concurrency limit `name` for the body; a limit that
    does not exist holds nothing (see the module's docstring)."""
    if read_limit(name) is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    # strict=False: a limit deleted since it was read holds nothing rather than failing
    # the batch. A failed lease renewal (the server unreachable for a while) is logged,
    # and the batch goes on: stopping it halfway would only redo its work.
    with concurrency(name, occupy=1, strict=False,
                     lease_duration=resources().settings.limit_lease_seconds,
                     holder=_holder(), raise_on_lease_renewal_failure=False):
        yield


def database_batch() -> Any:
    """One slot of reinstatement-database-batches, for one verify or restore batch."""
    return slot(DATABASE_BATCHES)


def smtp_connection() -> Any:
    """One slot of reinstatement-smtp-connections, for as long as a connection is open."""
    return slot(SMTP_CONNECTIONS)


class MailRate(RateLimiter):
    """Paces sends to the global rate limit reinstatement-mail-rate, and to this process's
    own REINSTATE_NOTIFY_RATE_PER_SECOND (0: none) as before.

    Slots are drawn from Prefect's server a chunk at a time (a tenth of a second's worth of
    the global rate) and handed out one per send, so a fast sender asks the server ten
    times a second, not once per notice. A process holds at most one chunk unused.
    """

    def __init__(self, local_rate: float, limit: Limit | None) -> None:
        super().__init__(local_rate or None, burst=max(1, int(local_rate // 10)))
        self.global_limit = limit if limit is not None and limit.slot_decay_per_second else None
        self.chunk = 1
        if self.global_limit is not None:
            self.chunk = max(1, min(self.global_limit.limit,
                                    math.ceil(self.global_limit.slot_decay_per_second / 10)))
        self._left = 0
        self._global_lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return super().unlimited and self.global_limit is None

    def acquire(self) -> None:
        super().acquire()
        if self.global_limit is None:
            return
        with self._global_lock:
            if self._left == 0:
                from prefect.concurrency.sync import rate_limit

                rate_limit(MAIL_RATE, occupy=self.chunk, strict=False)
                self._left = self.chunk
            self._left -= 1


_rates_lock = threading.Lock()
_rates: dict[tuple[float, Limit | None], MailRate] = {}


def mail_rate_limit() -> Limit | None:
    """The global mail rate as the Prefect server has it (read at most every 30 s); None
    where there is none."""
    limit = read_limit(MAIL_RATE)
    if limit is not None and not limit.slot_decay_per_second:
        limit = None  # a plain concurrency limit by that name is no rate: ignored
    return limit


def mail_rate(limit: Limit | None | EllipsisType = ...) -> MailRate | None:
    """One pacer per process and configuration, shared by every sending thread; None when
    neither a global rate limit nor a local rate applies.

    `limit`: the global mail rate as the caller already read it (`mail_rate_limit`); by
    default it is read here. A sender process is handed it by the flow's process with each
    batch, so where there is none it neither asks the server nor imports Prefect's client
    (1.0 to 1.4 s of CPU for each sender process as it starts, measured by import alone).
    """
    local = resources().settings.notify_rate_per_second
    if limit is ...:
        limit = mail_rate_limit()
    if not local and limit is None:
        return None
    with _rates_lock:
        key = (local, limit)
        if key not in _rates:
            _rates[key] = MailRate(local, limit)
        return _rates[key]


@dataclass(frozen=True)
class LimitSettings:
    """What `reinstate deploy` sets; None: keep the server's value, or the default for a
    limit that does not exist yet."""

    database_batches: int | None = None
    smtp_connections: int | None = None
    mail_rate: float | None = None


def ensure_limits(client: Any, wanted: LimitSettings) -> dict[str, Limit]:
    """Create the three limits where missing (with the defaults, or `wanted`), and set the
    values `wanted` names on existing ones. Returns them as the server has them now."""
    from prefect.exceptions import ObjectNotFound

    def existing(name: str) -> Any:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None

    plan: list[tuple[str, int | None, float | None, int, float | None]] = [
        (DATABASE_BATCHES, wanted.database_batches, None, DEFAULT_DATABASE_BATCHES, None),
        (SMTP_CONNECTIONS, wanted.smtp_connections, None, DEFAULT_SMTP_CONNECTIONS, None),
    ]
    rate = wanted.mail_rate
    rate_limit_slots = None if rate is None else max(1, math.ceil(rate))
    plan.append((MAIL_RATE, rate_limit_slots, rate, math.ceil(DEFAULT_MAIL_RATE),
                 DEFAULT_MAIL_RATE))
    result: dict[str, Limit] = {}
    for name, value, decay, default, default_decay in plan:
        found = existing(name)
        if found is None or value is not None:
            client.upsert_global_concurrency_limit_by_name(
                name, value if value is not None else default,
                slot_decay_per_second=decay if decay is not None else default_decay)
            found = existing(name)
            if found.slot_decay_per_second and found.active_slots > found.limit:
                # A rate lowered from a higher one: the slots taken under the old rate
                # would otherwise decay at the new one (1,000 of them at 20/s: 50 s of
                # nothing sent). A rate limit's slots are not held, so this frees no one's.
                from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(active_slots=found.limit))
                found = existing(name)
        result[name] = Limit(found.name, int(found.limit),
                             float(found.slot_decay_per_second or 0.0), bool(found.active))
    forget_known_limits()
    return result
