"""Tests for the email backends, against a real SMTP server running in the test process.

The server is aiosmtpd with a handler that records every accepted message and can be
told to misbehave the ways real servers do: defer the first attempt (451), refuse a
recipient (550), drop the connection, or answer slower than the client's timeout. Retry
waits are replaced with `wait_none()`; nothing here sleeps for a backoff.
"""

from __future__ import annotations

import email
import email.policy
import io
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from tenacity import wait_none

from reinstatement.notices.addresses import (
    _DOMAIN_RE,
    _LOCAL_PART_RE,
    message_id_for,
    normalise_recipient,
)
from reinstatement.notices.backends import (
    ConsoleBackend,
    DeferredDelivery,
    DeliveryConfigurationError,
    DeliveryError,
    DeliveryOutcomeUnknown,
    EmailBackend,
    FileBackend,
    PermanentDeliveryError,
    PipeliningSmtpBackend,
    SmtpBackend,
    TransientDeliveryError,
    mask_email,
    smtp_path,
)
from reinstatement.notices.backends.smtp import dot_stuffed
from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.notices.render import NoticeContext, NoticeRenderer
from reinstatement.resources import backend_from_settings
from reinstatement.settings import EmailBackendName, Settings, load_settings
from tests.smtp_server import RecordingHandler, ServerFactory, SmtpServer, free_port

SENDER = "Trust & Safety <trust-and-safety@example.com>"
PASSWORD = "Tr0ub4dor&3-not-for-logs"
LOGGER = "reinstatement.notices.backends"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def trusting(certificate: tuple[Path, Path]) -> Callable[[], ssl.SSLContext]:
    return lambda: ssl.create_default_context(cafile=str(certificate[0]))


def accept_password(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"mailer"
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False: let aiosmtpd send the 235/535 reply itself.
    return AuthResult(success=ok, handled=False)


# -- notices to send ------------------------------------------------------------------------

_renderer = NoticeRenderer()


@dataclass(frozen=True)
class Notice:
    recipient: str
    message_id: str
    data: bytes


def notice(account_id: int, recipient: str | None = None) -> Notice:
    recipient = recipient or f"user{account_id}@example.com"
    message_id = message_id_for("INC-TEST", account_id, "example.com")
    ctx = NoticeContext(
        incident_key="INC-TEST",
        case_id=account_id,
        account_id=account_id,
        username=f"user{account_id}",
        display_name=None,
        recipient=recipient,
        locale="en",
        rule_names=("spam_burst",),
        ban_date=datetime(2025, 4, 15, tzinfo=UTC),
        pins_restored=3,
        message_id=message_id,
        sender=SENDER,
    )
    return Notice(recipient, message_id, _renderer.render_bytes(ctx))


def smtp_backend(server: SmtpServer, *, pipelining: bool = True, **overrides: Any
                 ) -> SmtpBackend:
    """The fast path (`PipeliningSmtpBackend`, the default), or with `pipelining=False`
    the plain one, as `REINSTATE_SMTP_PIPELINING=false` makes it."""
    options: dict[str, Any] = {"sender": SENDER, "timeout": 5.0, "retry_wait": wait_none()}
    options.update(overrides)
    backend = PipeliningSmtpBackend if pipelining else SmtpBackend
    return backend("127.0.0.1", server.port, **options)


# The tests of the SMTP conversation and of how its failures map run on both paths: the
# switch must change how commands are written, never what a failure means.
both_paths = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "plain"])


def send(backend: EmailBackend, item: Notice) -> None:
    backend.send(item.recipient, item.message_id, item.data)


def assert_logs_are_clean(caplog: pytest.LogCaptureFixture, *addresses: str) -> None:
    for record in caplog.records:
        line = record.getMessage()
        assert PASSWORD not in line
        for address in addresses:
            assert address not in line, line


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


# -- SMTP -----------------------------------------------------------------------------------


@both_paths
def test_batch_reuses_one_connection(
    smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture, pipelining: bool
) -> None:
    server = smtp_server()
    batch = [notice(i) for i in range(1, 6)]
    with smtp_backend(server, pipelining=pipelining) as backend:
        for item in batch:
            send(backend, item)
        assert backend.connections_opened == 1
    handler = server.handler
    assert handler.delivered_ids == Counter(item.message_id for item in batch)
    assert max(handler.delivered_ids.values()) == 1
    assert handler.connections_used == 1
    assert handler.ehlo_count == 1
    first = handler.delivered[0]
    assert first.mail_from == "trust-and-safety@example.com"
    assert first.rcpt_tos == ["user1@example.com"]
    assert first.content.replace(b"\r\n", b"\n") == batch[0].data.replace(b"\r\n", b"\n")
    assert_logs_are_clean(caplog, *(item.recipient for item in batch))


@both_paths
def test_lines_beginning_with_a_dot_arrive_as_written(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    """Dot-stuffing (RFC 5321 4.5.2): a line that is only a dot must not end the message
    early, and a leading dot must not be lost, at the start or anywhere else."""
    server = smtp_server()
    # CRLF lines only, as every notice is written: a dot after a bare LF is doubled too
    # (the property test below), so that a lenient server cannot read "\n.\r\n" as the end.
    bodies = [b".first line\r\n.\r\n..two\r\nmid.dle\r\n.", b"a\r\n.\r\nb\r\n",
              b"x\r\n.y\r\n\r\n.\r\n"]
    ids = [message_id_for("INC-TEST", i, "example.com") for i in range(len(bodies))]
    items = [Notice(f"user{i}@example.com", ids[i],
                    b"Message-ID: " + ids[i].encode() + b"\r\n\r\n" + body)
             for i, body in enumerate(bodies)]
    with smtp_backend(server, pipelining=pipelining) as backend:
        for item in items:
            send(backend, item)
    received = {m.message_id: m.content for m in server.handler.delivered}
    for item in items:
        sent = item.data if item.data.endswith(b"\r\n") else item.data + b"\r\n"
        assert received[item.message_id].replace(b"\r\n", b"\n") == sent.replace(
            b"\r\n", b"\n")


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"\r", b"a", b"..", b"\n."]),
                max_size=30).map(b"".join))
@settings(max_examples=500, deadline=None)
def test_dot_stuffing_doubles_every_leading_dot(message: bytes) -> None:
    import re

    stuffed = dot_stuffed(message)
    expected = re.sub(rb"(?m)^\.", b"..", message)
    expected += b"" if expected.endswith(b"\r\n") else b"\r\n"
    assert stuffed == expected + b".\r\n"


@both_paths
def test_send_without_open_connects_lazily(smtp_server: ServerFactory, pipelining: bool) -> None:
    server = smtp_server()
    backend = smtp_backend(server, pipelining=pipelining)
    send(backend, notice(1))
    send(backend, notice(2))
    backend.close()
    backend.close()
    assert server.handler.connections_used == 1


@both_paths
def test_a_deferral_is_not_retried_in_line_and_the_connection_moves_on(
    smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture, pipelining: bool
) -> None:
    """Greylisting (451 on the first try) must not stall the connection with sleeps: each
    notice is handed back deferred at once (the outbox reschedules it), the session stays
    open, and the next notice goes on it; the later try is delivered once."""
    server = smtp_server(RecordingHandler(defer_first_attempt=True))
    batch = [notice(i) for i in range(1, 4)]
    # The backend's own backoff (not the tests' wait_none): a retry would sleep.
    with smtp_backend(server, pipelining=pipelining, retry_wait=None) as backend:
        for item in batch:
            with pytest.raises(DeferredDelivery) as raised:
                send(backend, item)
            assert raised.value.code == 451 and not raised.value.permanent
        assert backend.connections_opened == 1
        handler = server.handler
        assert handler.data_attempts == Counter(item.message_id for item in batch)
        assert handler.delivered == []
        for item in batch:  # the outbox's later attempt
            send(backend, item)
        assert backend.connections_opened == 1
    assert handler.delivered_ids == Counter(item.message_id for item in batch)
    assert all(handler.data_attempts[item.message_id] == 2 for item in batch)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert_logs_are_clean(caplog, *(item.recipient for item in batch))


@both_paths
def test_a_deferral_that_never_ends_stays_transient(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(defer_always=True))
    item = notice(1)
    with smtp_backend(server, pipelining=pipelining, max_attempts=2) as backend:
        with pytest.raises(TransientDeliveryError) as raised:
            send(backend, item)
    assert raised.value.code == 451
    assert "4.3.0 try later" in raised.value.text
    assert not raised.value.permanent
    assert server.handler.data_attempts[item.message_id] == 1  # not retried in line
    assert server.handler.delivered == []


@both_paths
def test_refused_recipient_is_permanent_and_not_retried(
    smtp_server: ServerFactory, caplog: pytest.LogCaptureFixture, pipelining: bool
) -> None:
    server = smtp_server(RecordingHandler(reject_recipients={"nobody@example.com"}))
    refused, fine = notice(1, "nobody@example.com"), notice(2)
    with smtp_backend(server, pipelining=pipelining) as backend:
        with pytest.raises(PermanentDeliveryError) as raised:
            send(backend, refused)
        send(backend, fine)
        assert backend.connections_opened == 1
    assert raised.value.code == 550
    assert "5.1.1 no such user" in raised.value.text
    assert raised.value.permanent
    assert server.handler.rcpt_attempts["nobody@example.com"] == 1
    assert server.handler.delivered_ids == Counter([fine.message_id])
    assert_logs_are_clean(caplog, refused.recipient, fine.recipient)


@both_paths
def test_refused_sender_is_a_configuration_error_not_the_recipients_fault(
    smtp_server: ServerFactory,
    pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(reject_sender=True))
    with (smtp_backend(server, pipelining=pipelining) as backend,
          pytest.raises(DeliveryConfigurationError) as raised):
        send(backend, notice(1))
    assert raised.value.code == 550
    assert not raised.value.permanent
    assert server.handler.mail_count == 1  # not retried


@both_paths
def test_connection_dropped_before_a_message_reconnects_without_duplicates(
    smtp_server: ServerFactory,
    pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(drop_at_mail_number=3))
    batch = [notice(i) for i in range(1, 6)]
    with smtp_backend(server, pipelining=pipelining) as backend:
        for item in batch:
            send(backend, item)
    handler = server.handler
    assert handler.delivered_ids == Counter(item.message_id for item in batch)
    assert handler.connections_used == 2


@both_paths
def test_connection_dropped_after_acceptance_is_never_resent(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(drop_after_data_number=2))
    batch = [notice(i) for i in range(1, 5)]
    outcomes: dict[str, str] = {}
    with smtp_backend(server, pipelining=pipelining) as backend:
        for item in batch:
            try:
                send(backend, item)
                outcomes[item.message_id] = "sent"
            except DeliveryError as exc:
                outcomes[item.message_id] = type(exc).__name__
                assert isinstance(exc, TransientDeliveryError)
    handler = server.handler
    # The server stored message 2 but its reply was lost: the backend must not resend it.
    assert outcomes[batch[1].message_id] == "DeliveryOutcomeUnknown"
    assert handler.data_attempts[batch[1].message_id] == 1
    assert handler.delivered_ids == Counter(item.message_id for item in batch)
    assert [outcomes[item.message_id] for item in (batch[0], batch[2], batch[3])] == ["sent"] * 3


@both_paths
def test_server_closing_an_idle_connection_is_not_an_error(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    server = smtp_server()
    with smtp_backend(server, pipelining=pipelining, max_attempts=1) as backend:
        send(backend, notice(1))
        server.abort_connections()
        time.sleep(0.05)  # let the close reach the client's socket
        send(backend, notice(2))
        assert backend.connections_opened == 2
    assert server.handler.delivered_ids == Counter(
        [notice(1).message_id, notice(2).message_id]
    )


@both_paths
def test_slow_server_times_out_quickly(smtp_server: ServerFactory, pipelining: bool) -> None:
    server = smtp_server(RecordingHandler(slow_rcpt_seconds=3.0))
    backend = smtp_backend(server, pipelining=pipelining, timeout=0.5, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as raised:
        send(backend, notice(1))
    assert time.monotonic() - started < 2.0
    assert not isinstance(raised.value, DeliveryOutcomeUnknown)
    assert "RCPT" in raised.value.text
    assert server.handler.delivered == []
    backend.close()


@both_paths
def test_slow_server_is_retried_up_to_the_limit(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(slow_rcpt_seconds=3.0))
    backend = smtp_backend(server, pipelining=pipelining, timeout=0.3, max_attempts=2)
    with pytest.raises(TransientDeliveryError):
        send(backend, notice(1))
    assert server.handler.rcpt_attempts["user1@example.com"] == 2
    backend.close()


@both_paths
def test_timeout_waiting_for_acceptance_is_an_unknown_outcome(
    smtp_server: ServerFactory, pipelining: bool,
) -> None:
    server = smtp_server(RecordingHandler(slow_data_seconds=1.5))
    backend = smtp_backend(server, pipelining=pipelining, timeout=0.5)
    with pytest.raises(DeliveryOutcomeUnknown):
        send(backend, notice(1))
    backend.close()
    time.sleep(1.2)  # the server finishes in its own time
    assert server.handler.data_attempts[notice(1).message_id] == 1


def test_nothing_listening_is_transient() -> None:
    backend = SmtpBackend(
        "127.0.0.1", free_port(), sender=SENDER, timeout=1.0, retry_wait=wait_none()
    )
    with pytest.raises(TransientDeliveryError) as raised:
        backend.open()
    assert "cannot connect" in raised.value.text


def test_starttls_required_but_not_offered_refuses_to_send(
    smtp_server: ServerFactory,
) -> None:
    server = smtp_server()
    backend = smtp_backend(server, starttls=True)
    with pytest.raises(DeliveryConfigurationError) as raised:
        send(backend, notice(1))
    assert "STARTTLS" in raised.value.text
    assert not raised.value.permanent
    handler = server.handler
    assert handler.mail_count == 0 and handler.delivered == []
    assert handler.ehlo_count == 1  # not retried: a missing STARTTLS will not appear


@both_paths
def test_starttls_and_login(
    smtp_server: ServerFactory,
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    pipelining: bool,
) -> None:
    server = smtp_server(
        tls_context=server_tls_context(certificate),
        require_starttls=True,
        authenticator=accept_password,
    )
    backend = smtp_backend(
        server,
        pipelining=pipelining,
        starttls=True,
        username="mailer",
        password=SecretStr(PASSWORD),
        ssl_context_factory=trusting(certificate),
    )
    with backend:
        send(backend, notice(1))
        send(backend, notice(2))
    delivered = server.handler.delivered
    assert len(delivered) == 2
    assert all(d.tls and d.authenticated for d in delivered)
    assert server.handler.connections_used == 1
    assert_logs_are_clean(caplog, "user1@example.com", "user2@example.com")


def test_wrong_password_is_a_configuration_error(
    smtp_server: ServerFactory,
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server(
        tls_context=server_tls_context(certificate), authenticator=accept_password
    )
    wrong = "wrong-" + PASSWORD
    backend = smtp_backend(
        server,
        starttls=True,
        username="mailer",
        password=SecretStr(wrong),
        ssl_context_factory=trusting(certificate),
    )
    with pytest.raises(DeliveryConfigurationError) as raised:
        send(backend, notice(1))
    assert raised.value.code == 535
    assert wrong not in str(raised.value) and wrong not in caplog.text
    assert server.handler.delivered == []


def test_untrusted_certificate_is_refused(
    smtp_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    server = smtp_server(tls_context=server_tls_context(certificate))
    backend = smtp_backend(server, starttls=True)  # the system's trust store only
    with pytest.raises(DeliveryConfigurationError) as raised:
        send(backend, notice(1))
    assert "certificate" in raised.value.text
    assert server.handler.mail_count == 0


def test_implicit_tls(smtp_server: ServerFactory, certificate: tuple[Path, Path]) -> None:
    server = smtp_server(ssl_context=server_tls_context(certificate))
    with smtp_backend(server, ssl=True, ssl_context_factory=trusting(certificate)) as backend:
        send(backend, notice(1))
    assert [d.tls for d in server.handler.delivered] == [True]


@both_paths
def test_invalid_recipient_is_permanent_without_contacting_the_server(
    smtp_server: ServerFactory,
    pipelining: bool,
) -> None:
    server = smtp_server()
    backend = smtp_backend(server, pipelining=pipelining)
    good = notice(1)
    for bad in ("user@example.com\r\nRCPT TO:<x@example.com>", "not an address", ""):
        with pytest.raises(PermanentDeliveryError):
            backend.send(bad, good.message_id, good.data)
    assert server.handler.ehlo_count == 0


def test_repr_and_errors_never_show_the_password(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    backend = smtp_backend(server, username="mailer", password=SecretStr(PASSWORD))
    assert PASSWORD not in repr(backend)
    assert "**********" in repr(backend)
    # This server offers no AUTH over a clear connection: login fails, and says so safely.
    with pytest.raises(DeliveryConfigurationError) as raised:
        backend.open()
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in repr(raised.value)


def test_tls_modes_are_exclusive() -> None:
    with pytest.raises(ValueError):
        SmtpBackend("localhost", 25, sender=SENDER, starttls=True, ssl=True)


# -- file and console ----------------------------------------------------------------------


def test_file_backend_writes_one_eml_per_message_id(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    batch = [notice(i) for i in range(1, 4)]
    with FileBackend(outbox) as backend:
        for item in batch:
            send(backend, item)
    files = sorted(outbox.iterdir())
    assert [f.name for f in files] == sorted(
        item.message_id.strip("<>") + ".eml" for item in batch
    )
    assert (outbox / (batch[0].message_id.strip("<>") + ".eml")).read_bytes() == batch[0].data


def test_file_backend_same_id_twice_is_one_file(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path)
    item = notice(1)
    send(backend, item)
    backend.send(item.recipient, item.message_id, item.data + b"")
    backend.send(item.recipient, item.message_id, b"second version\r\n")
    assert [f.name for f in tmp_path.iterdir()] == [item.message_id.strip("<>") + ".eml"]
    assert backend.path_for(item.message_id).read_bytes() == b"second version\r\n"


def test_file_backend_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FileBackend(tmp_path)
    item = notice(1)
    send(backend, item)

    def crash(*args: object) -> None:
        raise OSError("disk gone at the worst moment")

    monkeypatch.setattr("reinstatement.notices.backends.files.os.replace", crash)
    with pytest.raises(TransientDeliveryError):
        backend.send(item.recipient, item.message_id, b"half")
    with pytest.raises(TransientDeliveryError):
        send(backend, notice(2))
    # The earlier file is whole, the failed one absent, and no temporary is left behind.
    assert [f.name for f in tmp_path.iterdir()] == [item.message_id.strip("<>") + ".eml"]
    assert backend.path_for(item.message_id).read_bytes() == item.data


def test_file_backend_writes_beside_a_temporary_file_left_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file's name is the process id and a counter; one already there (left
    by an earlier process with the same id) is neither reused nor touched."""
    import itertools

    import reinstatement.notices.backends.files as backends

    monkeypatch.setattr(backends, "_TEMPORARY_NUMBERS", itertools.count(7))
    left = tmp_path / f".tmp-{os.getpid()}-7.part"
    left.write_bytes(b"someone else's half-written file")
    backend = FileBackend(tmp_path)
    first, second = notice(1), notice(2)
    send(backend, first)
    send(backend, second)
    assert left.read_bytes() == b"someone else's half-written file"
    assert backend.path_for(first.message_id).read_bytes() == first.data
    assert backend.path_for(second.message_id).read_bytes() == second.data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [left.name] + [backend.path_for(n.message_id).name for n in (first, second)])
    # Only the owner may read a notice, as with tempfile.mkstemp.
    assert backend.path_for(first.message_id).stat().st_mode & 0o777 == 0o600


def test_file_names_stay_inside_the_outbox_and_never_collide(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "outbox")
    message_ids = ("<../../etc/passwd>", "<a/b@x>", "<a_b@x>", "<.hidden@x>", f"<{'x' * 400}>")
    paths = {backend.path_for(message_id) for message_id in message_ids}
    assert len(paths) == 5
    for path in paths:
        assert path.parent == tmp_path / "outbox"
        assert not path.name.startswith(".")
        assert len(path.name) < 200
    with pytest.raises(ValueError):
        backend.path_for("<>")


def test_file_backend_refuses_an_invalid_recipient(tmp_path: Path) -> None:
    with pytest.raises(PermanentDeliveryError):
        FileBackend(tmp_path).send("a@b.example\r\nBcc: c@d.example", "<id@x>", b"x")
    assert list(tmp_path.iterdir()) == []


def test_console_backend_writes_to_its_stream() -> None:
    stream = io.StringIO()
    item = notice(1)
    ConsoleBackend(stream).send(item.recipient, item.message_id, item.data)
    output = stream.getvalue()
    assert output.startswith(ConsoleBackend.separator + "\n")
    assert output.endswith(ConsoleBackend.separator + "\n")
    assert f"Message-ID: {item.message_id}\n" in output
    assert "\r" not in output


def test_console_backend_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    item = notice(1)
    with ConsoleBackend() as backend:
        send(backend, item)
    assert f"To: {item.recipient}" in capsys.readouterr().out


# -- settings, masking, pacing -------------------------------------------------------------


def test_backend_from_settings_picks_each_backend(tmp_path: Path) -> None:
    file_backend = backend_from_settings(
        Settings(email_backend=EmailBackendName.FILE, email_dir=tmp_path / "out")
    )
    assert isinstance(file_backend, FileBackend)
    assert file_backend.directory == tmp_path / "out"
    assert isinstance(
        backend_from_settings(Settings(email_backend=EmailBackendName.CONSOLE)), ConsoleBackend
    )
    settings = Settings(
        email_backend=EmailBackendName.SMTP,
        email_from=SENDER,
        smtp_host="mail.example.com",
        smtp_port=587,
        smtp_username="mailer",
        smtp_password=SecretStr("from-environment"),
        smtp_starttls=True,
        smtp_timeout_seconds=12.5,
    )
    smtp = backend_from_settings(settings)
    assert type(smtp) is PipeliningSmtpBackend  # REINSTATE_SMTP_PIPELINING is on by default
    assert (smtp.host, smtp.port, smtp.username, smtp.starttls, smtp.ssl, smtp.timeout) == (
        "mail.example.com", 587, "mailer", True, False, 12.5,
    )  # fmt: skip
    assert smtp.envelope_sender == "trust-and-safety@example.com"
    assert smtp._password is not None
    assert smtp._password.get_secret_value() == "from-environment"
    override = backend_from_settings(settings, smtp_password=SecretStr("from-prefect-block"))
    assert isinstance(override, SmtpBackend) and override._password is not None
    assert override._password.get_secret_value() == "from-prefect-block"
    assert "from-prefect-block" not in repr(override)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane.doe@example.com", "j***@example.com"),
        ("J@example.com", "J***@example.com"),
        ("Jane Doe <jane@example.com>", "j***@example.com"),
        ("@example.com", "***@example.com"),
        ("not-an-address", "***"),
        ("", "***"),
        ("a@b@example.com", "a***@example.com"),
        ("x@exa\r\nmple.com", "x***@exa??mple.com"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


class FakeClock:
    """Time that moves only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.mark.parametrize("rate", [None, 0])
def test_rate_limiter_unlimited(rate: float | None) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        limiter.acquire()
    assert clock.sleeps == [] and limiter.unlimited


def test_rate_limiter_paces_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.sleeps == []
    limiter.acquire()
    assert clock.sleeps == [pytest.approx(0.1)]
    clock.now += 60  # a long pause refills the bucket, but only up to the burst
    for _ in range(3):
        limiter.acquire()
    assert len(clock.sleeps) == 1
    assert not limiter.try_acquire()
    clock.now += 0.1
    assert limiter.try_acquire()


def test_rate_limiter_holds_the_rate_across_threads() -> None:
    clock = FakeClock()
    limiter = RateLimiter(50.0, burst=5, clock=clock, sleep=clock.sleep)
    start = clock.now

    def worker() -> None:
        for _ in range(25):
            limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 200 tokens: 5 from the burst, 195 at 50 per second.
    assert clock.now - start == pytest.approx(195 / 50)


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1.0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, burst=0)


@pytest.mark.parametrize(("sync", "fsyncs", "syncfs"), [("batch", 0, 1), ("each", 6, 0),
                                                         ("none", 0, 0)])
def test_file_notices_are_made_durable_per_batch_or_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str, fsyncs: int, syncfs: int
) -> None:
    import reinstatement.notices.backends.files as backends

    calls = Counter[str]()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.update(["fsync"]), real_fsync(fd)))
    monkeypatch.setattr(backends, "_sync_filesystem",
                        lambda directory: calls.update(["syncfs"]))
    with FileBackend(tmp_path / "outbox", sync=sync) as backend:
        for item in (notice(1), notice(2), notice(3)):
            send(backend, item)
        assert calls["syncfs"] == 0  # not before the batch ends
    assert calls["fsync"] == fsyncs  # each: the file and the folder, per notice
    assert calls["syncfs"] == syncfs
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_syncing_the_filesystem_works_here(tmp_path: Path) -> None:
    from reinstatement.notices.backends.files import _sync_filesystem

    _sync_filesystem(tmp_path)  # no error: syncfs(2), or sync(2) where there is none


@pytest.mark.parametrize(("pipelining", "writes_per_notice"), [(True, 2), (False, 4)])
def test_a_server_offering_pipelining_gets_the_envelope_in_one_write(
    smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, pipelining: bool,
    writes_per_notice: int,
) -> None:
    """MAIL, RCPT and DATA in one write where the server offers PIPELINING (two round
    trips a notice, not four); refusals still map as without it, and the session stays
    usable after them."""
    import smtplib

    server = smtp_server(RecordingHandler(pipelining=pipelining,
                                          reject_recipients={notice(2).recipient}))
    writes = []
    real_send = smtplib.SMTP.send
    monkeypatch.setattr(smtplib.SMTP, "send",
                        lambda self, data: (writes.append(data), real_send(self, data))[1])
    with smtp_backend(server) as backend:
        writes.clear()  # the session's greeting and EHLO
        send(backend, notice(1))
        assert len(writes) == writes_per_notice
        with pytest.raises(PermanentDeliveryError) as refused:
            send(backend, notice(2))
        assert refused.value.code == 550
        send(backend, notice(3))
        assert backend.connections_opened == 1
    assert server.handler.delivered_ids == Counter([notice(1).message_id,
                                                    notice(3).message_id])


def send_then(backend: EmailBackend, item: Notice, upcoming: Notice | None) -> None:
    """Send `item`, telling the backend which notice comes next."""
    backend.send(item.recipient, item.message_id, item.data,
                 None if upcoming is None else (upcoming.recipient, upcoming.message_id))


def assert_each_went_to_its_own_recipient(handler: RecordingHandler) -> None:
    for delivery in handler.delivered:
        to = email.message_from_bytes(delivery.content, policy=email.policy.default)["To"]
        assert delivery.rcpt_tos == [str(to)], delivery


def test_the_next_notice_s_envelope_goes_out_with_this_one_s_data(
    smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Told which notice comes next, the backend writes its MAIL, RCPT and DATA after this
    notice's data (RFC 2920): one write and one round trip a notice, on one connection."""
    import smtplib

    server = smtp_server()
    writes: list[bytes] = []
    real_send = smtplib.SMTP.send
    monkeypatch.setattr(smtplib.SMTP, "send",
                        lambda self, data: (writes.append(data), real_send(self, data))[1])
    first, second, third = notice(1), notice(2), notice(3)
    with smtp_backend(server) as backend:
        writes.clear()
        send_then(backend, first, second)
        assert len(writes) == 2  # its own envelope, then its data with the next envelope
        assert writes[1].endswith(f"RCPT TO:<{second.recipient}>\r\nDATA\r\n".encode())
        send_then(backend, second, third)
        send_then(backend, third, None)
        assert len(writes) == 4
        assert backend.connections_opened == 1
    assert server.handler.delivered_ids == Counter(n.message_id for n in (first, second, third))
    assert_each_went_to_its_own_recipient(server.handler)


def test_a_refusal_at_the_end_of_data_leaves_the_next_envelope_open(
    smtp_server: ServerFactory,
) -> None:
    """A 451 at the end of a notice's data (greylisting) ends that transaction only: the
    next notice, whose envelope went out with it, goes on the same connection at once."""
    server = smtp_server(RecordingHandler(defer_first_attempt=True))
    first, second = notice(1), notice(2)
    with smtp_backend(server) as backend:
        with pytest.raises(DeferredDelivery):
            send_then(backend, first, second)
        with pytest.raises(DeferredDelivery):
            send_then(backend, second, first)
        send_then(backend, first, second)
        send_then(backend, second, None)
        assert backend.connections_opened == 1
    assert server.handler.delivered_ids == Counter([first.message_id, second.message_id])
    assert_each_went_to_its_own_recipient(server.handler)


def test_a_notice_never_goes_under_the_envelope_opened_for_another(
    smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller announced one notice and sends another (the announced one's claim was
    lost, say): the open envelope is abandoned with its connection, the other notice goes
    to its own recipient, and the announced one is never delivered. Closing a backend
    with an envelope open delivers nothing and sends no QUIT (the server, waiting for the
    announced notice's content, would take it for content)."""
    import smtplib

    writes: list[bytes] = []
    real_send = smtplib.SMTP.send
    monkeypatch.setattr(smtplib.SMTP, "send",
                        lambda self, data: (writes.append(data), real_send(self, data))[1])
    server = smtp_server()
    first, announced, other, last = notice(1), notice(2), notice(3), notice(4)
    backend = smtp_backend(server)
    with backend:
        send_then(backend, first, announced)
        send_then(backend, other, last)
        assert backend.connections_opened == 2
    started = time.monotonic()
    backend.close()  # already closed: nothing happens
    with smtp_backend(server) as again:
        send_then(again, first, announced)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    sent = [w.decode("ascii", "replace") if isinstance(w, bytes) else str(w) for w in writes]
    assert not [w for w in sent if w.lower().startswith("quit")]
    time.sleep(0.2)  # the server sees the connection end
    assert server.handler.delivered_ids == Counter(
        [first.message_id, other.message_id, first.message_id])
    assert announced.message_id not in server.handler.data_attempts
    assert last.message_id not in server.handler.data_attempts
    assert_each_went_to_its_own_recipient(server.handler)


# -- the switch: REINSTATE_SMTP_PIPELINING ------------------------------------------------


@pytest.mark.parametrize(("value", "chosen"), [
    (None, PipeliningSmtpBackend), ("true", PipeliningSmtpBackend),
    ("false", SmtpBackend), ("0", SmtpBackend),
])
def test_the_environment_switches_smtp_pipelining(
    monkeypatch: pytest.MonkeyPatch, value: str | None, chosen: type[SmtpBackend],
) -> None:
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    if value is None:
        monkeypatch.delenv("REINSTATE_SMTP_PIPELINING", raising=False)
    else:
        monkeypatch.setenv("REINSTATE_SMTP_PIPELINING", value)
    assert type(backend_from_settings(load_settings())) is chosen


def _recording_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write smtplib makes from now on, as bytes."""
    import smtplib

    writes: list[bytes] = []
    real_send = smtplib.SMTP.send

    def send(self: smtplib.SMTP, data: bytes | str) -> None:
        writes.append(data.encode("ascii") if isinstance(data, str) else data)
        real_send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", send)
    return writes


def _send_through_the_settings(server: SmtpServer, batch: list[Notice],
                               writes: list[bytes]) -> list[bytes]:
    """Send `batch` as the notify step does: a backend built from the environment's
    settings, each notice told which comes next. The writes it made, greeting aside."""
    settings = load_settings().model_copy(update={
        "email_backend": EmailBackendName.SMTP, "email_from": SENDER,
        "smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_timeout_seconds": 5.0})
    with backend_from_settings(settings) as backend:
        writes.clear()
        for item, upcoming in zip(batch, [*batch[1:], None], strict=True):
            send_then(backend, item, upcoming)
        return list(writes)


def test_with_pipelining_off_each_command_waits_for_its_reply(
    smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REINSTATE_SMTP_PIPELINING=false: against a server that offers PIPELINING, every
    write holds one command or one notice's content (four writes, each awaiting its reply,
    a notice), and the server receives exactly what the pipelined path delivers."""
    batch = [notice(i) for i in range(1, 5)] + [Notice(
        "dots@example.com", message_id_for("INC-TEST", 99, "example.com"),
        b"To: dots@example.com\r\nMessage-ID: "
        + message_id_for("INC-TEST", 99, "example.com").encode()
        + b"\r\n\r\n.leading dot\r\n.\r\nend\r\n")]
    contents = {dot_stuffed(item.data) for item in batch}

    recorded = _recording_writes(monkeypatch)
    monkeypatch.setenv("REINSTATE_SMTP_PIPELINING", "false")
    plain = smtp_server()
    writes = _send_through_the_settings(plain, batch, recorded)
    assert len(writes) == 4 * len(batch)
    for write in writes:
        assert write in contents or (write.count(b"\r\n") == 1 and write.endswith(b"\r\n")), write

    monkeypatch.setenv("REINSTATE_SMTP_PIPELINING", "true")
    pipelined = smtp_server()
    writes = _send_through_the_settings(pipelined, batch, recorded)
    # The control: switched on, envelopes go several commands to a write.
    assert len(writes) == len(batch) + 1
    assert any(write.count(b"\r\n") > 1 and write not in contents for write in writes)

    def received(server: SmtpServer) -> list[tuple[str, list[str], str, bytes]]:
        return [(d.mail_from, d.rcpt_tos, d.message_id, d.content)
                for d in server.handler.delivered]

    assert received(plain) == received(pipelined)
    assert [d.message_id for d in plain.handler.delivered] == [n.message_id for n in batch]
    assert plain.handler.connections_used == pipelined.handler.connections_used == 1
    assert_each_went_to_its_own_recipient(plain.handler)


_ADDRESSES = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}",
              st.from_regex(_LOCAL_PART_RE, fullmatch=True).filter(lambda s: len(s) <= 64),
              st.from_regex(_DOMAIN_RE, fullmatch=True).filter(lambda s: len(s) <= 180)),
    st.text(max_size=40).map(lambda s: s + "@example.com"),
    st.text(max_size=60),
)


@settings(max_examples=400, deadline=None)
@given(_ADDRESSES)
def test_the_smtp_path_of_an_accepted_address_is_what_smtplib_makes_of_it(address: str) -> None:
    """The sender writes `<address>` for MAIL FROM and RCPT TO without smtplib.quoteaddr's
    second parse: for every address normalise_recipient accepts, the two are the same."""
    import smtplib

    try:
        accepted = normalise_recipient(address)
    except ValueError:
        return
    assert smtp_path(accepted) == smtplib.quoteaddr(accepted)


def test_a_mail_rate_read_by_the_caller_is_not_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender process is handed the global mail rate its flow read: it paces by that
    one and asks the Prefect server nothing (where there is none, it never imports
    Prefect's client). Without it, the pacer reads the limit itself."""
    from tasks import limits

    asked: list[str] = []

    def read_limit(name: str) -> limits.Limit | None:
        asked.append(name)
        return limits.Limit(name, 40, 40.0, True)

    monkeypatch.setattr(limits, "read_limit", read_limit)
    monkeypatch.delenv("REINSTATE_NOTIFY_RATE_PER_SECOND", raising=False)
    assert limits.mail_rate(None) is None
    handed = limits.mail_rate(limits.Limit(limits.MAIL_RATE, 20, 20.0, True))
    assert handed is not None and handed.global_limit is not None and handed.chunk == 2
    assert asked == []
    read = limits.mail_rate()
    assert read is not None and read.chunk == 4 and asked == [limits.MAIL_RATE]
