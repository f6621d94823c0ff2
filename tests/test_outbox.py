"""The outbox against a real SMTP server (aiosmtpd in the test process), without Prefect.

A small platform with reinstated accounts (some without an address, some with display
names written to break things) is planned, verified and restored as the flow would, then
its notices are sent with `outbox.send_batch` over `SmtpBackend` until nothing is due.
The server misbehaves the ways real ones do (451 on the first try, 550 for one address,
dropped connections, answers slower than the timeout, no STARTTLS), and each test checks
the contract's promise: one notice per reinstated account with an address, none for the
others, nothing lost, nothing sent twice except a message whose outcome the client could
not know, and then with the same Message-ID.

Backoff waits are patched out (`wait_none()`); where a notice waits for its next attempt,
the test moves `next_attempt_at` into the past instead of sleeping.
"""

from __future__ import annotations

import email
import email.policy
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from tenacity import wait_none

from reinstatement import outbox
from reinstatement.incident_request import IncidentRequest, build_request
from reinstatement.models import Notice
from reinstatement.notices.backends import (
    DeliveryConfigurationError,
    PipeliningSmtpBackend,
    SmtpBackend,
    TransientDeliveryError,
)
from reinstatement.notices.render import NoticeRenderer
from reinstatement.platform_schema import accounts
from reinstatement.states import NoticeState
from reinstatement.store import prepared_records
from reinstatement.store.engine import utcnow
from tests.factories import SPAM_CORRECTED, SPAM_FAULTY, T0, WRONGFUL, Platform
from tests.smtp_server import RecordingHandler, ServerFactory, SmtpServer, free_port
from tests.test_steps import run_all

KEY = "INC-OUTBOX-1"
SENDER = "Trust & Safety <trust-and-safety@example.com>"
LEASE = timedelta(minutes=5)
RENDERER = NoticeRenderer()

HOSTILE_NAMES = [
    "Eve\r\nBcc: everyone@attacker.test",
    '<script>alert("pwned")</script> & "friends"',
    "=?utf-8?q?Subject:_forged?=\n\nFake body",
]


@dataclass
class OutboxScenario:
    with_address: dict[int, str]  # account id -> its email
    without_address: set[int]


def build_platform(engine: Engine, addressed: int = 5, unaddressed: int = 2) -> OutboxScenario:
    """`addressed` + `unaddressed` accounts, each banned once, wrongly, by spam@7."""
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", SPAM_FAULTY)
        p.rule("spam", 8, "active", SPAM_CORRECTED)
        with_address: dict[int, str] = {}
        without_address: set[int] = set()
        for n in range(addressed + unaddressed):
            has_address = n < addressed
            account = p.account(
                email="user@example.test" if has_address else None,
                display_name=HOSTILE_NAMES[n % len(HOSTILE_NAMES)],
                locale=("en", "fr", "pt-BR", "ja", "xx")[n % 5],
            )
            ban = p.ban(account, faulty, WRONGFUL)
            p.pin(account, "hidden", ban)
            if has_address:
                with_address[account] = conn.execute(
                    select(accounts.c.email).where(accounts.c.id == account)).scalar_one()
            else:
                without_address.add(account)
    return OutboxScenario(with_address, without_address)


def incident_request() -> IncidentRequest:
    return build_request(incident_key=KEY, faulty_versions=["spam@7"],
                         since=T0 - timedelta(days=10), until=T0 + timedelta(days=10),
                         batch_size=3, require_approval=False)


def restored(engine: Engine, **kwargs: int) -> OutboxScenario:
    scenario = build_platform(engine, **kwargs)
    run_all(engine, incident_request())
    return scenario


def smtp_backend(server: SmtpServer, *, timeout: float = 5.0, starttls: bool = False
                 ) -> SmtpBackend:
    # The backend the settings build by default (REINSTATE_SMTP_PIPELINING on).
    return PipeliningSmtpBackend(host="127.0.0.1", port=server.port, sender=SENDER, timeout=timeout,
                       starttls=starttls, retry_wait=wait_none())


def send_until_done(engine: Engine, server: SmtpServer, *, limit: int = 2,
                    timeout: float = 5.0, lease: timedelta = LEASE,
                    max_rounds: int = 50) -> list[outbox.SendResult]:
    """Send batches until none is claimed (notices waiting for a later attempt stay)."""
    results: list[outbox.SendResult] = []
    for _ in range(max_rounds):
        result = outbox.send_batch(engine, smtp_backend(server, timeout=timeout), RENDERER,
                                   limit, sender=SENDER, lease=lease)
        if not result.claimed:
            return results
        results.append(result)
    raise AssertionError(f"the outbox was not empty after {max_rounds} batches")


def make_due(engine: Engine) -> None:
    """Pretend time passed: every notice waiting for a retry or a lease is due now."""
    with engine.begin() as conn:
        conn.execute(update(Notice)
                     .where(Notice.state.in_([NoticeState.RETRY, NoticeState.SENDING]))
                     .values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def notices(engine: Engine) -> dict[int, Any]:
    """Every notice row, by account id."""
    with engine.connect() as conn:
        return {n.account_id: n for n in conn.execute(select(Notice).order_by(Notice.id))}


def expected_message_ids(engine: Engine) -> set[str]:
    return {n.message_id for n in notices(engine).values() if n.recipient is not None}


def assert_nothing_for_accounts_without_address(engine: Engine, scenario: OutboxScenario,
                                                server: SmtpServer) -> None:
    rows = notices(engine)
    for account_id in scenario.without_address:
        assert rows[account_id].state == NoticeState.NO_ADDRESS
        assert rows[account_id].attempts == 0
        assert rows[account_id].message_id not in server.handler.data_attempts
    delivered_to = {r for d in server.handler.delivered for r in d.rcpt_tos}
    assert delivered_to <= set(scenario.with_address.values())


# -- tests -------------------------------------------------------------------------------


def test_every_first_attempt_deferred_still_one_notice_each(
    engine: Engine, smtp_server: ServerFactory
) -> None:
    scenario = restored(engine)
    server = smtp_server(RecordingHandler(defer_first_attempt=True))

    first = send_until_done(engine, server)

    # Each was refused once (451) and rescheduled, not retried in line: one connection
    # went through the whole batch without waiting.
    expected = expected_message_ids(engine)
    assert len(expected) == len(scenario.with_address)
    assert server.handler.data_attempts == Counter(dict.fromkeys(expected, 1))
    assert server.handler.delivered == []
    assert sum(r.retry for r in first) == len(expected)
    rows = notices(engine)
    for account_id in scenario.with_address:
        assert rows[account_id].state == NoticeState.RETRY
        assert rows[account_id].last_error_code == 451
        assert rows[account_id].next_attempt_at is not None

    make_due(engine)  # the retry time came
    send_until_done(engine, server)

    assert set(server.handler.delivered_ids) == expected
    assert set(server.handler.delivered_ids.values()) == {1}
    assert server.handler.data_attempts == Counter(dict.fromkeys(expected, 2))
    rows = notices(engine)
    for account_id, address in scenario.with_address.items():
        assert rows[account_id].state == NoticeState.SENT
        assert rows[account_id].sent_at is not None
        assert rows[account_id].recipient == address
        assert rows[account_id].attempts == 2
    assert_nothing_for_accounts_without_address(engine, scenario, server)


def test_user_written_names_change_no_header_and_inject_no_markup(
    engine: Engine, smtp_server: ServerFactory
) -> None:
    scenario = restored(engine)
    server = smtp_server()
    send_until_done(engine, server)
    assert len(server.handler.delivered) == len(scenario.with_address)
    texts, htmls = [], []
    for delivery in server.handler.delivered:
        assert len(delivery.rcpt_tos) == 1
        message = email.message_from_bytes(delivery.content, policy=email.policy.default)
        assert sorted(message.keys()) == sorted([
            "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted",
            "X-Reinstatement-Reference", "Content-Type"])
        assert message["To"] == delivery.rcpt_tos[0]
        assert b"attacker.test" not in delivery.content.split(b"\r\n\r\n", 1)[0]
        text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
        assert text_part is not None and html_part is not None
        texts.append(text_part.get_content())
        htmls.append(html_part.get_content())
    # The names did reach the notices: on one line in the text, escaped in the HTML.
    assert any("Eve Bcc: everyone@attacker.test" in t for t in texts)
    assert not any("<script>" in h for h in htmls)
    assert any("&lt;script&gt;" in h for h in htmls)


def test_a_refused_recipient_fails_once_and_is_never_tried_again(
    engine: Engine, smtp_server: ServerFactory
) -> None:
    scenario = restored(engine)
    refused_account, refused_address = sorted(scenario.with_address.items())[1]
    server = smtp_server(RecordingHandler(reject_recipients={refused_address}))

    send_until_done(engine, server)
    make_due(engine)
    send_until_done(engine, server)

    rows = notices(engine)
    refused = rows[refused_account]
    assert refused.state == NoticeState.FAILED
    assert refused.last_error_code == 550
    assert refused.last_error_text == "5.1.1 no such user"
    assert refused.attempts == 1
    assert refused.next_attempt_at is None and refused.sent_at is None
    assert server.handler.rcpt_attempts[refused_address] == 1
    others = expected_message_ids(engine) - {refused.message_id}
    assert server.handler.delivered_ids == Counter(dict.fromkeys(others, 1))
    for account_id in set(scenario.with_address) - {refused_account}:
        assert rows[account_id].state == NoticeState.SENT
    assert_nothing_for_accounts_without_address(engine, scenario, server)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_connection_dropped_at_mail_loses_and_duplicates_nothing(
    engine: Engine, smtp_server: ServerFactory, k: int
) -> None:
    scenario = restored(engine)
    server = smtp_server(RecordingHandler(drop_at_mail_number=k))

    send_until_done(engine, server)
    make_due(engine)  # resume: anything left waiting is taken up again
    send_until_done(engine, server)

    assert server.handler.mail_count > len(scenario.with_address)  # the drop happened
    assert server.handler.delivered_ids == Counter(dict.fromkeys(expected_message_ids(engine), 1))
    assert {n.state for a, n in notices(engine).items() if a in scenario.with_address} == {
        NoticeState.SENT}
    assert_nothing_for_accounts_without_address(engine, scenario, server)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_connection_dropped_after_data_resends_only_that_message_with_its_id(
    engine: Engine, smtp_server: ServerFactory, k: int
) -> None:
    scenario = restored(engine)
    server = smtp_server(RecordingHandler(drop_after_data_number=k))

    send_until_done(engine, server)
    rows = notices(engine)
    unknown = server.handler.delivered[k - 1].message_id
    in_doubt = next(n for n in rows.values() if n.message_id == unknown)
    # The server kept it but the client never heard: it is not recorded as sent.
    assert in_doubt.state == NoticeState.RETRY
    assert in_doubt.sent_at is None and in_doubt.next_attempt_at > utcnow()
    assert "end of DATA" in (in_doubt.last_error_text or "")

    make_due(engine)  # resume after the backoff
    send_until_done(engine, server)

    expected = expected_message_ids(engine)
    assert unknown in expected
    assert server.handler.delivered_ids == Counter(
        {m: 2 if m == unknown else 1 for m in expected})
    copies = [d for d in server.handler.delivered if d.message_id == unknown]
    assert len({d.content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0]
                for d in copies}) == 1
    assert {n.state for a, n in notices(engine).items() if a in scenario.with_address} == {
        NoticeState.SENT}
    assert_nothing_for_accounts_without_address(engine, scenario, server)


def test_a_server_slower_than_the_timeout_leaves_notices_to_retry(
    engine: Engine, smtp_server: ServerFactory
) -> None:
    restored(engine, addressed=2, unaddressed=1)
    server = smtp_server(RecordingHandler(slow_data_seconds=0.8))
    before = utcnow()

    results = send_until_done(engine, server, timeout=0.4)

    assert sum(r.sent for r in results) == 0
    assert sum(r.retry for r in results) == 2
    for notice in notices(engine).values():
        if notice.recipient is None:
            continue
        assert notice.state == NoticeState.RETRY
        assert notice.sent_at is None
        assert notice.next_attempt_at > before + timedelta(seconds=30)
        assert notice.last_error_text
        assert notice.attempts == 1
    # Nothing is recorded as sent that the server did not take.
    sent = {n.message_id for n in notices(engine).values() if n.state == NoticeState.SENT}
    assert sent <= set(server.handler.delivered_ids)


def test_transient_failures_beyond_max_attempts_end_failed(
    engine: Engine, smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "MAX_ATTEMPTS", 3)
    scenario = restored(engine, addressed=2, unaddressed=1)
    server = smtp_server(RecordingHandler(defer_always=True))

    for round_number in range(1, 4):
        send_until_done(engine, server)
        states = {n.state for a, n in notices(engine).items() if a in scenario.with_address}
        assert states == ({NoticeState.RETRY} if round_number < 3 else {NoticeState.FAILED})
        make_due(engine)
    assert send_until_done(engine, server) == []

    for account_id in scenario.with_address:
        notice = notices(engine)[account_id]
        assert notice.attempts == 3
        assert notice.last_error_code == 451
        assert notice.next_attempt_at is None
        # Three outbox attempts, none retried in line by the backend.
        assert server.handler.data_attempts[notice.message_id] == 3
    assert server.handler.delivered == []


def test_a_crash_between_claim_and_send_is_resent(
    engine: Engine, smtp_server: ServerFactory, backend: str
) -> None:
    """PostgreSQL: at once, as no live session holds the claim. SQLite: after the lease."""
    scenario = restored(engine)
    server = smtp_server()
    with engine.begin() as conn:
        claimed = outbox.claim_notices(conn, 3, SENDER, LEASE)
    # ... and the process dies here, before any send (no session holds the claim).
    assert len(claimed) == 3
    claimed_ids = {c.id for c in claimed}
    rows = {n.id: n for n in notices(engine).values()}
    assert {rows[i].state for i in claimed_ids} == {NoticeState.SENDING}

    if backend == "sqlite":
        # While the lease holds, no other run takes them.
        send_until_done(engine, server)
        assert {n.id for n in notices(engine).values()
                if n.state == NoticeState.SENDING} == claimed_ids
        assert not set(server.handler.delivered_ids) & {c.message_id for c in claimed}
        make_due(engine)  # the lease runs out
    send_until_done(engine, server)

    assert server.handler.delivered_ids == Counter(dict.fromkeys(expected_message_ids(engine), 1))
    rows = {n.id: n for n in notices(engine).values()}
    for notice in claimed:
        assert rows[notice.id].state == NoticeState.SENT
        assert rows[notice.id].message_id == notice.message_id
        assert rows[notice.id].attempts == 2  # the crashed claim counts as an attempt
    assert_nothing_for_accounts_without_address(engine, scenario, server)


def test_a_tiny_lease_expires_and_the_notices_are_taken_over(
    engine: Engine, smtp_server: ServerFactory
) -> None:
    restored(engine, addressed=2, unaddressed=0)
    server = smtp_server()
    with engine.begin() as conn:
        claimed = outbox.claim_notices(conn, 10, SENDER, timedelta(milliseconds=20))
    assert len(claimed) == 2
    time.sleep(0.05)  # the lease runs out
    send_until_done(engine, server)
    assert server.handler.delivered_ids == Counter({c.message_id: 1 for c in claimed})
    assert {n.state for n in notices(engine).values()} == {NoticeState.SENT}


def test_a_rerun_sends_nothing_more(engine: Engine, smtp_server: ServerFactory) -> None:
    restored(engine)
    server = smtp_server()
    send_until_done(engine, server)
    delivered, rows = list(server.handler.delivered), notices(engine)

    run_all(engine, incident_request())
    make_due(engine)
    assert send_until_done(engine, server) == []

    assert server.handler.delivered == delivered
    assert notices(engine).keys() == rows.keys()
    assert {a: (n.state, n.attempts, n.sent_at) for a, n in notices(engine).items()} == {
        a: (n.state, n.attempts, n.sent_at) for a, n in rows.items()}


@pytest.mark.parametrize("problem", ["no STARTTLS", "sender refused"])
def test_a_configuration_error_gives_the_batch_back_and_raises(
    engine: Engine, smtp_server: ServerFactory, problem: str
) -> None:
    restored(engine)
    if problem == "no STARTTLS":
        server = smtp_server()  # aiosmtpd without a TLS context offers no STARTTLS
        backend = smtp_backend(server, starttls=True)
    else:
        server = smtp_server(RecordingHandler(reject_sender=True))
        backend = smtp_backend(server)
    before = notices(engine)

    with pytest.raises(DeliveryConfigurationError):
        outbox.send_batch(engine, backend, RENDERER, 3, sender=SENDER, lease=LEASE)

    after = notices(engine)
    now = utcnow()
    for account_id, notice in after.items():
        if notice.recipient is None:
            continue
        assert notice.state == NoticeState.PENDING, account_id
        assert notice.attempts == 0
        assert notice.next_attempt_at <= now
        assert notice.sent_at is None
    assert {a: n.state for a, n in after.items()} == {a: n.state for a, n in before.items()}
    assert server.handler.delivered == []

    # Once the settings are fixed, every notice goes out, once.
    good = smtp_server()
    send_until_done(engine, good)
    assert good.handler.delivered_ids == Counter(dict.fromkeys(expected_message_ids(engine), 1))


def test_an_unreachable_server_gives_the_batch_back_uncounted(engine: Engine) -> None:
    restored(engine)
    nobody = SmtpBackend(host="127.0.0.1", port=free_port(), sender=SENDER, timeout=1.0,
                         retry_wait=wait_none())

    with pytest.raises(TransientDeliveryError):
        outbox.send_batch(engine, nobody, RENDERER, 3, sender=SENDER, lease=LEASE)

    addressed = [n for n in notices(engine).values() if n.recipient is not None]
    # Not one notice was tried: none waits out a lease, none has used up an attempt.
    assert {(n.state, n.attempts) for n in addressed} == {(NoticeState.PENDING, 0)}


class _QuotingHandler(RecordingHandler):
    """Quotes the refused address back, as many real servers do."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, options)
        if reply.startswith("550"):
            return f"550 5.1.1 <{address}>: no such user here"
        return reply


# aiosmtpd, the test's own server, logs the conversation it receives; it is not ours.
_SERVER_LOGGERS = ("mail.log", "mail.debug", "asyncio")


def test_addresses_never_appear_unmasked_in_logs(
    engine: Engine, smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scenario = restored(engine)
    addresses = sorted(scenario.with_address.values())
    server = smtp_server(_QuotingHandler(defer_first_attempt=True,
                                         reject_recipients={addresses[0]},
                                         drop_after_data_number=2))
    caplog.clear()

    send_until_done(engine, server)
    make_due(engine)
    send_until_done(engine, server)

    ours = [r for r in caplog.records if not r.name.startswith(_SERVER_LOGGERS)]
    assert any("***@example.test" in r.getMessage() for r in ours)  # the logs do talk
    formatter = logging.Formatter()
    for record in ours:
        text = record.getMessage()
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        for address in addresses:
            assert address not in text, (record.name, text)
    failed = notices(engine)[next(a for a, e in scenario.with_address.items()
                                  if e == addresses[0])]
    assert failed.state == NoticeState.FAILED
    assert addresses[0] not in (failed.last_error_text or "")


# -- claims carry a token -------------------------------------------------------------

def _claim(engine: Engine, lease: timedelta, limit: int = 10) -> list[outbox.ClaimedNotice]:
    with engine.begin() as conn:
        return outbox.claim_notices(conn, limit, SENDER, lease)


def test_a_claim_taken_over_after_its_lease_is_neither_sent_nor_written_under(
    engine: Engine, smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    restored(engine, addressed=3, unaddressed=0)
    server = smtp_server()
    first = _claim(engine, timedelta(seconds=0.2))
    assert len(first) == 3
    time.sleep(0.4)  # the first sender stalls past its lease...
    second = _claim(engine, LEASE)  # ...and another sender takes the notices over
    assert {n.id for n in second} == {n.id for n in first}
    assert {n.claim_token for n in second}.isdisjoint({n.claim_token for n in first})

    with caplog.at_level(logging.WARNING, logger="reinstatement.outbox"):
        late = outbox.send_claimed(engine, smtp_backend(server), RENDERER, first,
                                   timedelta(seconds=0.2))
    assert late.sent == 0  # nothing sent under a claim that is gone
    assert "taken over by another sender" in caplog.text
    current = outbox.send_claimed(engine, smtp_backend(server), RENDERER, second, LEASE)
    assert current.sent == 3
    assert set(server.handler.delivered_ids.values()) == {1}
    assert {n.state for n in notices(engine).values()} == {NoticeState.SENT}


def test_a_send_that_outlives_its_lease(
    engine: Engine, smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture,
    backend: str,
) -> None:
    """One SMTP send outlives its lease while a second sender claims due notices.

    PostgreSQL: the first sender's session still holds the claim, so the second takes
    nothing and the notice goes out once. SQLite (the lease is the only rule there): the
    second sender takes it over, and the first sender's late state is refused and logged.
    """
    restored(engine, addressed=1, unaddressed=0)
    server = smtp_server(RecordingHandler(slow_data_seconds=0.8))
    (notice,) = _claim(engine, timedelta(seconds=0.3))
    taken: list[outbox.ClaimedNotice] = []

    def take_over() -> None:
        time.sleep(0.5)  # while the first send is still under way
        taken.extend(_claim(engine, LEASE))

    import threading

    other = threading.Thread(target=take_over)
    other.start()
    with caplog.at_level(logging.WARNING, logger="reinstatement.outbox"):
        outbox.send_claimed(engine, smtp_backend(server), RENDERER, [notice],
                            timedelta(seconds=0.3))
    other.join()
    assert "outlived its claim" in caplog.text
    if backend == "postgresql":
        assert taken == []
        assert notices(engine)[notice.context.account_id].state == NoticeState.SENT
        assert server.handler.delivered_ids == Counter({notice.message_id: 1})
        assert _claim(engine, LEASE) == []  # and nothing is left to claim
        return
    assert [n.id for n in taken] == [notice.id]
    assert "claim was taken over before its state was written" in caplog.text
    row = notices(engine)[notice.context.account_id]
    assert row.state == NoticeState.SENDING and row.claim_token == taken[0].claim_token
    assert row.sent_at is None  # the first sender's record was refused


def test_a_claims_lock_key_is_the_same_in_both_spellings(engine: Engine, backend: str) -> None:
    """The holders take their lock through sql/queries (holders.sql, runs.sql), the askers
    test it through lock_key(): the key a holder holds is the one lock_key() computes."""
    if backend != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    from sqlalchemy import literal

    from reinstatement import runner, runs
    from reinstatement.holders import SessionHold, holder_is_gone, lock_key

    def held_keys(pid: int) -> set[int]:
        with engine.connect() as conn:
            return {int(key) for key in conn.execute(text(
                "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND objsubid = 1 AND pid = :pid"),
                {"pid": pid}).scalars()}

    def key(claim: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(lock_key(literal(claim)))).scalar_one())

    for claim in ("run:1", "0f" * 16, "ünï"):
        with SessionHold(engine, claim) as hold, engine.connect() as conn:
            assert hold.connection is not None
            pid = hold.connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert held_keys(pid) == {key(claim)}, claim
            assert conn.execute(select(holder_is_gone(literal(claim)))).scalar() is False
        assert held_keys(pid) == set()
        with engine.connect() as conn:
            assert conn.execute(select(holder_is_gone(literal(claim)))).scalar() is True

    # A run holds its own claim from the statement that inserts its row.
    build_platform(engine)
    incident = runner.register(engine, incident_request(), "test")
    run_id = runs.start_run(engine, incident.id, None, False)
    with engine.connect() as conn:
        assert conn.execute(select(holder_is_gone(literal(runs.run_claim(run_id))))
                            ).scalar() is False
        assert runs.is_dead(conn, run_id, None, None) is False
    runs.finish_run(engine, run_id, "completed", {})
    with engine.connect() as conn:
        assert runs.is_dead(conn, run_id, None, None) is True


@pytest.mark.parametrize(("due", "size", "connections", "expected"), [
    (46462, 5000, 2, 4647),  # ten batches, five a connection; not nine of 5,000 and 1,462
    (4690, 5000, 2, 2345),  # one batch would leave a connection idle
    (9000, 5000, 2, 4500),
    (10000, 5000, 2, 5000),
    (10001, 5000, 2, 2501),
    (46462, 5000, 1, 4647),
    (3, 5000, 8, 1),
    (1, 1, 3, 1),
    (0, 5000, 2, 5000),
])
def test_notices_are_sent_in_equal_batches_a_multiple_of_the_connections(
    due: int, size: int, connections: int, expected: int,
) -> None:
    batch = outbox.even_batch_size(due, size, connections)
    assert batch == expected
    if due:
        batches = -(-due // batch)
        assert batch <= size
        assert batches % connections == 0 or batches == due < connections
        assert batch * batches - due < batches  # none more than one notice short


def test_a_notice_state_is_written_only_under_its_own_claim(engine: Engine) -> None:
    """The recorder's UPDATE (on PostgreSQL a statement prepared on the held connection)
    writes every value it is given, text beyond ASCII and timestamps included, and only
    while the notice is still 'sending' under the recorder's own claim."""
    restored(engine, addressed=3, unaddressed=0)
    claimed = _claim(engine, LEASE)
    assert len(claimed) == 3
    mine, taken, done = claimed
    with engine.begin() as conn:  # another sender took one notice over
        conn.execute(update(Notice).where(Notice.id == taken.id)
                     .values(claim_token=outbox.new_claim_token()))
    when = utcnow() - timedelta(minutes=3)
    refusal = "451 4.7.1 Grüße, réessayez plus tard — 再試行"
    for _ in range(2):  # a second recorder on the same pooled connection prepares nothing
        recorder = outbox._NoticeRecorder(engine, mine.claim_token)
        try:
            recorder.hold()
            assert recorder.record(mine, {"state": NoticeState.RETRY, "last_error_code": 451,
                                          "last_error_text": refusal,
                                          "next_attempt_at": when})
            assert not recorder.record(taken, {"state": NoticeState.SENT, "sent_at": when,
                                               "next_attempt_at": None})
        finally:
            recorder.close()
        with engine.begin() as conn:  # back to 'sending' for the second round
            conn.execute(update(Notice).where(Notice.id == mine.id)
                         .values(state=NoticeState.SENDING))
    recorder = outbox._NoticeRecorder(engine, done.claim_token)
    try:
        assert recorder.record(done, {"state": NoticeState.SENT, "sent_at": when,
                                      "next_attempt_at": None, "last_error_code": None,
                                      "last_error_text": None})
        assert not recorder.record(done, {"state": NoticeState.FAILED})  # no longer sending
    finally:
        recorder.close()
    rows = {n.id: n for n in notices(engine).values()}
    assert rows[mine.id].last_error_code == 451
    assert rows[mine.id].last_error_text == refusal
    assert rows[mine.id].next_attempt_at == when
    assert rows[taken.id].state == NoticeState.SENDING and rows[taken.id].sent_at is None
    assert rows[done.id].state == NoticeState.SENT and rows[done.id].sent_at == when
    assert rows[done.id].next_attempt_at is None


def test_two_senders_claiming_at_once_never_share_a_notice(
    engine: Engine, backend: str
) -> None:
    """While one sender's claim is still open (its transaction not yet committed), a second
    sender's claim takes the other due notices and none of the first's, without waiting."""
    if backend != "postgresql":
        pytest.skip("SQLite lets one writer at a time: the second claim waits for the first")
    from sqlalchemy import text

    restored(engine, addressed=5, unaddressed=0)
    with engine.connect() as first_conn, engine.connect() as second_conn:
        first_conn.begin()
        first = outbox.claim_notices(first_conn, 3, SENDER, LEASE)
        second_conn.begin()
        # A claim that waited for the first's row locks would fail here, not hang.
        second_conn.execute(text("SET LOCAL lock_timeout = '2s'"))
        second = outbox.claim_notices(second_conn, 10, SENDER, LEASE)
        second_conn.commit()
        first_conn.commit()
    assert len(first) == 3 and len(second) == 2
    assert {n.id for n in first}.isdisjoint({n.id for n in second})
    rows = notices(engine).values()
    assert {n.state for n in rows} == {NoticeState.SENDING}
    assert {n.claim_token for n in rows} == {first[0].claim_token, second[0].claim_token}
    assert all(n.attempts == 1 for n in rows)


def test_a_record_statement_s_name_stands_for_that_statement_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pooled connection keeps the record statements prepared on it by name, and senders
    in threads of one process build them concurrently: a name depends on the statement
    alone, never on the order in which they were built."""
    retry = ("last_error_code", "last_error_text", "next_attempt_at", "state")
    sent = ("last_error_code", "last_error_text", "next_attempt_at", "sent_at", "state")
    monkeypatch.setattr(prepared_records, "_RAW_RECORD_SQL", {})
    first = {columns: prepared_records._raw_record_sql(columns) for columns in (retry, sent)}
    monkeypatch.setattr(prepared_records, "_RAW_RECORD_SQL", {})
    second = {columns: prepared_records._raw_record_sql(columns) for columns in (sent, retry)}
    assert first == second
    assert first[retry][0] != first[sent][0] and first[retry][1] != first[sent][1]
