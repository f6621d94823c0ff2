"""The outbox: sending the notices that restores queued, exactly once where it can be.

A notice row is written in the same transaction as its account's restore, so no notice
exists for a restore that rolled back and none is lost when the sender fails. Sending:

1. claim a batch of due notices (pending, retry whose time has come, or sending whose
   lease ran out after a crash) and mark them 'sending' with a lease, in one commit;
2. for each, outside any transaction: render, send, and commit its new state at once
   (sent, retry with the next attempt time, or failed with the server's code and text).

So a crash can leave at most the one notice whose send was under way unrecorded, per
connection sending; it is sent again later with the same Message-ID (deterministic from
the incident and account), which lets the recipient's mail system drop the copy. That
holds for a restart or a crash of the database server too: each record is a durable
commit, and a sender whose connection dropped takes its claim's hold again and checks
which notices are still its own before it sends another (tests/test_outbox_restart.py
restarts a private PostgreSQL mid-notify and counts).
Those commits go over one connection held for the batch (autocommit on PostgreSQL, so it
is never idle in a transaction during a send): a pool checkout and a transaction per
notice cost more than the send itself (the scale benchmark measured ~350 notices/s).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, or_, select, update
from sqlalchemy.exc import DBAPIError

from reinstatement.holders import SessionHold, holder_is_gone
from reinstatement.models import Case, Incident, Notice
from reinstatement.notices.backends import (
    DeliveryConfigurationError,
    DeliveryError,
    EmailBackend,
    mask_email,
)
from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.notices.render import NoticeContext, NoticeRenderer
from reinstatement.platform_schema import accounts
from reinstatement.retrying import in_transaction, is_transient
from reinstatement.states import NoticeState
from reinstatement.store import Store, store_for
from reinstatement.store.engine import utcnow
from reinstatement.store.prepared_records import record_prepared

logger = logging.getLogger(__name__)

# A batch's lease is extended once a third of it has passed, by time rather than by count:
# every 200 notices (as before) rewrote the rest of a 5,000 batch 25 times, an eighth of
# the notify step's CPU in the scale benchmark, and a count says nothing when sends slow.
LEASE_REFRESH_FRACTION = 3
MAX_ATTEMPTS = 8
RETRY_BASE = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=6)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff between attempts: 1, 2, 4 ... minutes, at most six hours."""
    return min(RETRY_MAX, RETRY_BASE * (2 ** max(0, attempts - 1)))


def _due(now: datetime, store: Store) -> Any:
    """Notices to send now: pending or retrying ones whose time has come, and claimed ones
    whose holder is gone (see reinstatement/holders.py).

    On PostgreSQL a claim's holder is gone the moment its session is: the lease plays no
    part, so a dead sender's notices are sent at once and a live, slow sender's never taken
    over. On SQLite (and for a claim with no token) a claim is gone when its lease ran out.
    """
    waiting = (Notice.state.in_([NoticeState.PENDING, NoticeState.RETRY])
               & (Notice.next_attempt_at <= now))
    lease_out = (Notice.state == NoticeState.SENDING) & (Notice.next_attempt_at <= now)
    if not store.session_locks:
        return or_(waiting, lease_out)
    return or_(
        waiting,
        lease_out & Notice.claim_token.is_(None),
        (Notice.state == NoticeState.SENDING) & Notice.claim_token.is_not(None)
        & holder_is_gone(Notice.claim_token),
    )


@dataclass
class ClaimedNotice:
    id: int
    message_id: str
    recipient: str
    locale: str
    attempts: int
    context: NoticeContext
    claim_token: str
    claimed_at: float  # time.monotonic() when the claim was taken


def due_count(conn: Connection, incident_id: int | None = None,
              now: datetime | None = None) -> int:
    query = select(func.count()).select_from(Notice).where(
        _due(now or utcnow(), store_for(conn)))
    if incident_id is not None:
        query = query.where(Notice.incident_id == incident_id)
    return int(conn.execute(query).scalar_one())


def next_deferred_due(conn: Connection, incident_id: int) -> datetime | None:
    """When the incident's earliest notice that a mail server deferred (a 4xx reply, such
    as greylisting's 451) comes due again; None if none waits."""
    return conn.execute(
        select(func.min(Notice.next_attempt_at)).where(
            Notice.incident_id == incident_id, Notice.state == NoticeState.RETRY,
            Notice.last_error_code >= 400, Notice.last_error_code < 500)
    ).scalar_one()


def unsettled_count(conn: Connection, incident_id: int | None,
                    now: datetime | None = None) -> int:
    """Notices of the incident (of every incident, with None) not yet settled: not sent,
    failed, without an address or suppressed, nor waiting for a retry time still to come.

    A notice a sender claimed counts until its outcome commits: the count falls notice by
    notice while a batch sends (the notify step's progress reads it)."""
    query = select(func.count()).select_from(Notice).where(
        or_(Notice.state.in_([NoticeState.PENDING, NoticeState.SENDING]),
            (Notice.state == NoticeState.RETRY) & (Notice.next_attempt_at <= (now or utcnow()))),
    )
    if incident_id is not None:
        query = query.where(Notice.incident_id == incident_id)
    return int(conn.execute(query).scalar_one())


def even_batch_size(due: int, size: int, connections: int) -> int:
    """A batch size for sending `due` notices over `connections` at once: equal batches
    of at most `size`, as many as a multiple of the connections, so that every connection
    gets the same share and they end together (`size` when nothing is due).

    4,690 notices in one batch of 5,000 would go over one connection while the others
    stay idle; 46,462 in batches of 5,000 left one connection sending the last full batch
    alone after the other's batch of 1,462.
    """
    if due <= 0:
        return size
    batches = math.ceil(math.ceil(due / size) / connections) * connections
    return math.ceil(due / batches)


def _rule_names(reasons: dict[str, Any] | None) -> tuple[str, ...]:
    names = {str(b.get("faulty_version", "")).split("@")[0]
             for b in (reasons or {}).get("faulty_bans", []) if isinstance(b, dict)}
    return tuple(sorted(n for n in names if n))


def _ban_date(reasons: dict[str, Any] | None, fallback: datetime) -> datetime:
    moments = [datetime.fromisoformat(str(b["created_at"]))
               for b in (reasons or {}).get("faulty_bans", [])
               if isinstance(b, dict) and b.get("created_at")]
    return min(moments, default=fallback)


def claim_notices(conn: Connection, limit: int, sender: str, lease: timedelta,
                  incident_id: int | None = None, case_ids: Sequence[int] | None = None,
                  token: str | None = None) -> list[ClaimedNotice]:
    """Mark up to `limit` due notices 'sending' under a lease and return what to send.

    The claim gets a token of its own; every later write of the claim (its renewal, each
    notice's final state, a release) checks it, so a claim another sender took over after
    its lease ran out is never written to, nor sent under.
    """
    now, claimed_at = utcnow(), time.monotonic()
    token = token or new_claim_token()
    query = (
        select(Notice.id).where(_due(now, store_for(conn))).order_by(Notice.id).limit(limit)
    )
    if incident_id is not None:
        query = query.where(Notice.incident_id == incident_id)
    if case_ids is not None:
        query = query.where(Notice.case_id.in_(case_ids))
    query = store_for(conn).locked(query, skip_locked=True)
    # The due notices are chosen inside the UPDATE and read back by their new token: a
    # list of 5,000 ids bound into two statements cost a sender 100 us of CPU a notice
    # (SQLAlchemy and the driver build a statement with 5,000 parameters, twice).
    claimed = conn.execute(
        update(Notice).where(Notice.id.in_(query.scalar_subquery()))
        .values(state=NoticeState.SENDING, attempts=Notice.attempts + 1,
                next_attempt_at=now + lease, updated_at=now, claim_token=token)
    ).rowcount
    if not claimed:
        return []
    rows = conn.execute(
        select(Notice.id, Notice.message_id, Notice.recipient, Notice.locale, Notice.attempts,
               Notice.account_id, Case.id.label("case_id"), Case.reasons, Case.pins_restored,
               Case.updated_at, Incident.key, accounts.c.username, accounts.c.display_name)
        .join(Case, Case.id == Notice.case_id)
        .join(Incident, Incident.id == Notice.incident_id)
        .join(accounts, accounts.c.id == Notice.account_id)
        .where(Notice.state == NoticeState.SENDING, Notice.claim_token == token)
        .order_by(Notice.id)
    ).all()
    return [
        ClaimedNotice(
            id=r.id, message_id=r.message_id, recipient=r.recipient, locale=r.locale,
            attempts=r.attempts,
            context=NoticeContext(
                incident_key=r.key, case_id=r.case_id, account_id=r.account_id,
                username=r.username, display_name=r.display_name, recipient=r.recipient,
                locale=r.locale, rule_names=_rule_names(r.reasons),
                ban_date=_ban_date(r.reasons, r.updated_at),
                pins_restored=r.pins_restored or 0, message_id=r.message_id, sender=sender,
            ),
            claim_token=token, claimed_at=claimed_at,
        )
        for r in rows
    ]


def new_claim_token() -> str:
    return uuid.uuid4().hex


def _record(engine: Engine, notice: ClaimedNotice, values: dict[str, Any]) -> bool:
    def work(conn: Connection) -> bool:
        return conn.execute(update(Notice).where(
            Notice.id == notice.id, Notice.state == NoticeState.SENDING,
            Notice.claim_token == notice.claim_token,
        ).values(updated_at=utcnow(), **values)).rowcount == 1

    return in_transaction(engine, work)


_RECORD_STATEMENTS: dict[tuple[str, ...], Any] = {}


def _record_statement(columns: tuple[str, ...]) -> Any:
    """The UPDATE recording a notice's new state, built once per set of columns.

    Built once and executed with parameters: building a statement per notice (and its
    cache key) cost more CPU than the send in the scale benchmark.
    """
    statement = _RECORD_STATEMENTS.get(columns)
    if statement is None:
        statement = _RECORD_STATEMENTS[columns] = (
            update(Notice)
            .where(Notice.id == bindparam("v_notice_id"), Notice.state == NoticeState.SENDING,
                   Notice.claim_token == bindparam("v_claim_token"))
            .values(updated_at=bindparam("v_updated_at"),
                    **{name: bindparam(f"v_{name}") for name in columns})
        )
    return statement


class _NoticeRecorder:
    """Commits each sent notice's new state at once, over one connection held for a batch.

    On PostgreSQL the connection is in autocommit, so a record is one round trip and one
    durable commit (a commit acknowledged asynchronously could be lost to a crash of the
    database server, and its notice sent again: the server's WAL writer flushes only every
    few hundred milliseconds, a hundred notices at a sender's pace); elsewhere each record
    is its own short transaction on the held connection. A transient failure drops the
    connection (and with it the claim's hold) and records that notice through
    `in_transaction`; `reconnected` then tells the sender to take the hold again and check
    the claim before it sends anything more.
    """

    def __init__(self, engine: Engine, claim_token: str) -> None:
        self.engine = engine
        self.postgresql = store_for(engine).session_locks
        # On PostgreSQL the recording connection also holds the claim (an advisory lock):
        # while it lives no other sender takes these notices; when it dies, they are free.
        self._hold = SessionHold(engine, claim_token)
        self._conn: Connection | None = None
        self.reconnected = False

    def _connection(self) -> Connection:
        if self._conn is None:
            if self.postgresql:
                conn = self._hold.open().connection
                assert conn is not None
            else:
                conn = self.engine.connect()
            self._conn = conn
        return self._conn

    def hold(self) -> None:
        """Take the claim's hold now, before the notices are claimed under its token."""
        self._connection()

    def record(self, notice: ClaimedNotice, values: dict[str, Any]) -> bool:
        """Write the notice's new state under its claim; False if the claim was lost."""
        columns = tuple(sorted(values))
        try:
            conn = self._connection()
            if self.postgresql:
                written = record_prepared(conn, notice.id, notice.claim_token, columns,
                                          values) == 1
            else:
                parameters = {f"v_{name}": value for name, value in values.items()}
                parameters.update(v_notice_id=notice.id, v_updated_at=utcnow(),
                                  v_claim_token=notice.claim_token)
                with conn.begin():
                    written = conn.execute(_record_statement(columns),
                                           parameters).rowcount == 1
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            self.close()
            self.reconnected = True  # the hold lapsed meanwhile: check the claim again
            written = _record(self.engine, notice, values)
        if not written:
            self.reconnected = True  # check what else of the claim was taken over
            logger.warning("notice %s: its claim was taken over before its state was "
                           "written; the other sender records it", notice.id)
        return written

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self.postgresql:
            conn.close()
            return
        self._hold.close()


@dataclass
class SendResult:
    claimed: int = 0
    sent: int = 0
    retry: int = 0
    failed: int = 0


def _extend_claim(engine: Engine, notices: Sequence[ClaimedNotice], lease: timedelta
                  ) -> set[int]:
    """Renew the claim on these unsent notices; the ids still held (a claim another
    sender took over after its lease ran out is not renewed, and not sent)."""
    if not notices:
        return set()
    return in_transaction(engine, lambda conn: set(conn.execute(
        update(Notice)
        .where(Notice.id.in_([n.id for n in notices]), Notice.state == NoticeState.SENDING,
               Notice.claim_token == notices[0].claim_token)
        .values(next_attempt_at=utcnow() + lease)
        .returning(Notice.id)
    ).scalars()))


def _release(engine: Engine, notices: Sequence[ClaimedNotice]) -> None:
    """Give claimed, unsent notices back as they were: due now, the attempt not counted."""
    if not notices:
        return
    in_transaction(engine, lambda conn: conn.execute(
        update(Notice)
        .where(Notice.id.in_([n.id for n in notices]), Notice.state == NoticeState.SENDING,
               Notice.claim_token == notices[0].claim_token)
        .values(state=NoticeState.PENDING, attempts=Notice.attempts - 1,
                next_attempt_at=utcnow(), claim_token=None)
    ))


def send_claimed(engine: Engine, backend: EmailBackend, renderer: NoticeRenderer,
                 notices: Sequence[ClaimedNotice], lease: timedelta,
                 limiter: RateLimiter | None = None,
                 recorder: _NoticeRecorder | None = None) -> SendResult:
    """Send each claimed notice and commit its new state before the next one."""
    result = SendResult(claimed=len(notices))
    if not notices:
        return result
    recorder = recorder or _NoticeRecorder(engine, notices[0].claim_token)
    try:
        recorder.hold()
        _send_each(engine, backend, renderer, notices, lease, limiter, recorder, result)
    finally:
        recorder.close()
    return result


def _send_each(engine: Engine, backend: EmailBackend, renderer: NoticeRenderer,
               notices: Sequence[ClaimedNotice], lease: timedelta, limiter: RateLimiter | None,
               recorder: _NoticeRecorder, result: SendResult) -> None:
    held_until = (notices[0].claimed_at if notices else 0.0) + lease.total_seconds()
    lost: set[int] = set()
    for position, notice in enumerate(notices):
        # Renew the claim on what is left before it runs low, and drop what another
        # sender took over meanwhile: a notice is never sent under a claim that is gone.
        if recorder.reconnected or held_until - time.monotonic() < lease.total_seconds() * (
                1 - 1 / LEASE_REFRESH_FRACTION):
            recorder.reconnected = False
            # The hold first (again, after a dropped connection): from then on nobody else
            # takes these notices, so what is still held below stays this sender's.
            recorder.hold()
            renewed_at = time.monotonic()
            still_held = _extend_claim(engine, notices[position:], lease)
            lost |= {n.id for n in notices[position:]} - still_held
            held_until = renewed_at + lease.total_seconds()
        if notice.id in lost:
            logger.warning("notice %s: its claim was taken over by another sender; not "
                           "sent here", notice.id)
            continue
        try:
            message = renderer.render_bytes(notice.context)
        except ValueError as exc:
            # An address the platform holds but no mail system would take: permanent.
            recorder.record(notice, {"state": NoticeState.FAILED, "last_error_code": None,
                                        "last_error_text": f"not sendable: {exc}"[:2000],
                                        "next_attempt_at": None})
            result.failed += 1
            continue
        if limiter is not None:
            limiter.acquire()
        following = notices[position + 1] if position + 1 < len(notices) else None
        try:
            backend.send(notice.recipient, notice.message_id, message,
                         None if following is None or following.id in lost
                         else (following.recipient, following.message_id))
            if time.monotonic() > held_until:
                logger.warning("notice %s: its send outlived its claim; the state is "
                               "written only if no other sender took it over", notice.id)
        except DeliveryConfigurationError:
            # The mail server cannot be used as configured: no notice is at fault. Give
            # the batch back untouched and fail loudly so an operator fixes the settings.
            _release(engine, notices[position:])
            raise
        except DeliveryError as exc:
            values: dict[str, Any] = {"last_error_code": exc.code,
                                      "last_error_text": str(exc.text)[:2000]}
            if exc.permanent or notice.attempts >= MAX_ATTEMPTS:
                values.update(state=NoticeState.FAILED, next_attempt_at=None)
                result.failed += 1
                logger.warning("notice %s to %s failed: %s %s", notice.id,
                               mask_email(notice.recipient), exc.code, exc.text)
            else:
                values.update(state=NoticeState.RETRY,
                              next_attempt_at=utcnow() + retry_delay(notice.attempts))
                result.retry += 1
                logger.info("notice %s to %s will be retried: %s %s", notice.id,
                            mask_email(notice.recipient), exc.code, exc.text)
            recorder.record(notice, values)
            continue
        recorder.record(notice, {"state": NoticeState.SENT, "sent_at": utcnow(),
                                    "next_attempt_at": None, "last_error_code": None,
                                    "last_error_text": None})
        result.sent += 1


def send_batch(engine: Engine, backend: EmailBackend, renderer: NoticeRenderer, limit: int,
               sender: str, lease: timedelta, incident_id: int | None = None,
               case_ids: Sequence[int] | None = None,
               limiter: RateLimiter | None = None) -> SendResult:
    """Claim one batch of due notices and send them over one backend connection."""
    token = new_claim_token()
    recorder = _NoticeRecorder(engine, token)
    try:
        recorder.hold()  # held before the claim exists, so it is never unheld while alive
        notices = in_transaction(engine, lambda conn: claim_notices(
            conn, limit, sender, lease, incident_id, case_ids, token=token))
        if not notices:
            return SendResult()
        try:
            backend.open()
        except DeliveryError:
            # Not one notice was tried (the server is unreachable or cannot be used as
            # configured): give the batch back, as send_claimed does for such an error.
            _release(engine, notices)
            raise
        with backend:
            return send_claimed(engine, backend, renderer, notices, lease, limiter,
                                recorder=recorder)
    finally:
        recorder.close()
