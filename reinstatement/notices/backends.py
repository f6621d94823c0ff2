"""Deliver rendered notices: one small interface, three backends chosen by settings.

`SmtpBackend` is production: one connection reused across a batch, each send retried on
transient failures with tenacity, and every failure mapped to a `DeliveryError` that says
whether trying again later can help. `FileBackend` (an outbox of .eml files) and
`ConsoleBackend` are for local runs, the demo and tests, the way Django's email backends
are.

What `DeliveryError.permanent` means to a caller: True, this message to this recipient
will never go through, record it and move on; False, it may go later, keep the notice
pending. Configuration problems (no STARTTLS, login refused) are deliberately *not*
permanent: no user should lose their notice because the operator mistyped a setting.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import re
import smtplib
import ssl as ssl_module
import sys
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TextIO

from pydantic import SecretStr
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from reinstatement.notices.render import normalise_recipient
from reinstatement.settings import EmailBackendName, Settings

logger = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A notice could not be handed over. `code` is the SMTP reply code when there was one."""

    permanent: ClassVar[bool] = False

    def __init__(self, code: int | None, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{code} {text}" if code is not None else text)


class TransientDeliveryError(DeliveryError):
    """Trying again later may work: a 4xx reply, a dropped connection, a timeout."""

    permanent = False


class PermanentDeliveryError(DeliveryError):
    """This message to this recipient will never be accepted: a 5xx reply, a bad address."""

    permanent = True


class DeferredDelivery(TransientDeliveryError):
    """The server refused the message for now (a 4xx reply such as greylisting's 451).

    Not retried in line: a greylisting server wants minutes, not seconds, and sleeping
    would stall the connection for every notice behind this one. The outbox reschedules
    the notice (`outbox.retry_delay`) and the connection moves on to the next.
    """


class DeliveryConfigurationError(TransientDeliveryError):
    """The server cannot be used as configured (no STARTTLS, login refused, bad certificate).

    Not retried by the backend (it will not fix itself in a second) and not permanent (the
    notice is fine; the settings are not), so callers keep the notice pending.
    """


class DeliveryOutcomeUnknown(TransientDeliveryError):
    """The connection died after the whole message was sent but before the server replied.

    The server may have accepted it. The backend does not retry, because a retry would
    duplicate a message that may already be on its way; a caller that re-sends later does
    so with the same Message-ID, the same allowance the contract makes for a send under
    way when the process is killed.
    """


def mask_email(address: str) -> str:
    """An address fit for a log line: "jane.doe@example.com" -> "j***@example.com"."""
    candidate = (address or "").strip()
    if "<" in candidate and candidate.endswith(">"):
        candidate = candidate[candidate.rfind("<") + 1 : -1]
    local, at, domain = candidate.rpartition("@")
    # Keep log lines single and printable whatever the database holds.
    domain = "".join(c if c.isprintable() and not c.isspace() else "?" for c in domain)
    first = local[:1] if local[:1].isprintable() and not local[:1].isspace() else ""
    if not at:
        return "***"
    return f"{first}***@{domain}"


def smtp_path(address: str) -> str:
    """The SMTP path (`<address>`) of an address `normalise_recipient` returned.

    What smtplib.quoteaddr makes of it, without parsing it again with email.utils.parseaddr:
    twice a notice, that parse was a sixth of a sender process's CPU in the scale
    benchmark. A dot-atom local part and a letters-digits-hyphens domain, all that
    normalise_recipient lets through, need no quoting (tests/test_email_backends.py
    checks the two agree).
    """
    return f"<{address}>"


def _recipient_or_permanent(recipient: str) -> str:
    try:
        return normalise_recipient(recipient)
    except ValueError as exc:
        raise PermanentDeliveryError(None, f"invalid recipient address: {exc}") from None


# The recipient and message id of the notice a caller will send next (EmailBackend.send).
Upcoming = tuple[str, str]


class EmailBackend(ABC):
    """Where notices go. Use as a context manager around a batch: open once, send many."""

    name: ClassVar[str]

    def open(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing open
        """Prepare for a batch (connect, create a folder)."""

    def close(self) -> None:  # noqa: B027 - optional hook, as open()
        """Release whatever open() acquired; safe to call twice."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        """Hand over one rendered notice; raises a `DeliveryError` subclass on failure.

        `upcoming`: the recipient and message id of the notice the caller will send next,
        if it knows; a backend may start on it early (SMTP opens its envelope in the same
        write as this notice's data). The caller need not send it: a backend never sends
        one notice's content under another's envelope.
        """


_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


class FileBackend(EmailBackend):
    """An outbox folder with one .eml file per notice, named after its Message-ID.

    Each file is written to a temporary name and renamed into place, so a crash leaves
    either the whole message or nothing; sending the same Message-ID again replaces the
    same file, so a resumed run never makes a second copy.

    Durability: a killed process loses nothing written (the kernel holds it). Against a
    power loss, `sync="batch"` (the default) makes every file of a batch durable when the
    batch ends (`close()`, one `syncfs`), `sync="each"` fsyncs each file and the folder
    before its notice is recorded (about a millisecond a notice here, which bounds one
    sender at ~500 notices/s), and `sync="none"` leaves it to the kernel.
    """

    name = "file"

    def __init__(self, directory: Path, *, sync: str = "batch") -> None:
        if sync not in ("batch", "each", "none"):
            raise ValueError(f"sync must be batch, each or none, not {sync!r}")
        self.directory = Path(directory)
        self.sync = sync
        self._ready = False
        self._unsynced = False

    def __repr__(self) -> str:
        return f"FileBackend(directory={str(self.directory)!r})"

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ready = True

    def close(self) -> None:
        if self._unsynced:
            self._unsynced = False
            _sync_filesystem(self.directory)

    def path_for(self, message_id: str) -> Path:
        """The file a message id is written to."""
        stem = message_id.strip().removeprefix("<").removesuffix(">")
        if not stem:
            raise ValueError("message id is empty")
        safe = _FILE_NAME_UNSAFE.sub("_", stem).lstrip(".")
        if safe != stem or len(safe) > 150:
            # Two different ids must never share a file, so a changed or shortened name
            # carries a hash of the original.
            digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
            safe = f"{safe[:100]}-{digest[:16]}"
        return self.directory / f"{safe}.eml"

    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        _recipient_or_permanent(recipient)
        target = self.path_for(message_id)
        each = self.sync == "each"
        try:
            if not self._ready:
                self.open()
            descriptor, temporary = self._temporary_file()
            try:
                try:
                    view = memoryview(message)
                    while view:
                        view = view[os.write(descriptor, view):]
                    if each:
                        os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            if each:
                self._fsync_directory()
            elif self.sync == "batch":
                self._unsynced = True
        except OSError as exc:
            raise TransientDeliveryError(None, f"cannot write {target.name}: {exc}") from exc
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("wrote notice %s for %s", target.name, mask_email(recipient))

    def _temporary_file(self) -> tuple[int, str]:
        """A new file of this process's own in the folder, open for writing (mode 0600).

        Named after the process and a counter: `tempfile.mkstemp` drew a random name and
        the descriptor went through a buffered file, 116 to 142 us a notice against 81 to
        88 us for this (measured alone).
        A name already taken (a file left by an earlier process with the same id) falls
        back to mkstemp.
        """
        name = os.path.join(self.directory, f".tmp-{os.getpid()}-{next(_TEMPORARY_NUMBERS)}.part")
        try:
            return os.open(name, _NEW_FILE_FLAGS, 0o600), name
        except FileExistsError:
            return tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.directory)

    def _fsync_directory(self) -> None:
        # The rename itself is only durable once the directory entry is on disk.
        if os.name != "posix":
            return
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


_TEMPORARY_NUMBERS = itertools.count()
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(
    os, "O_BINARY", 0)


def _sync_filesystem(directory: Path) -> None:
    """Flush the filesystem holding `directory` to disk: syncfs(2) where the C library has
    it (Linux), else sync(2)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


class ConsoleBackend(EmailBackend):
    """Writes each notice to stdout (or the given stream), between separator lines."""

    name = "console"
    separator = "-" * 79

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        # Several worker threads may share one console; keep each message in one piece.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "ConsoleBackend()"

    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        _recipient_or_permanent(recipient)
        # Looked up at send time so that a redirected sys.stdout (pytest's capsys) is used.
        stream = self._stream if self._stream is not None else sys.stdout
        text = message.decode("utf-8", "replace").replace("\r\n", "\n")
        if not text.endswith("\n"):
            text += "\n"
        with self._lock:
            stream.write(f"{self.separator}\n{text}{self.separator}\n")
            stream.flush()


def _reply_text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def _dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: leading dots doubled, CRLF-terminated, then the lone dot.

    A line begins at the start and after each LF, as for a multi-line regular expression
    (which this was, at 22 us a notice; two byte replacements take under 1 us).
    """
    payload = message.replace(b"\n.", b"\n..")
    if payload.startswith(b"."):
        payload = b"." + payload
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


class SmtpBackend(EmailBackend):
    """Sends notices over SMTP on one reused connection, retrying transient failures.

    Not thread-safe: one connection carries one conversation; give each worker its own.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        starttls: bool = False,
        ssl: bool = False,
        timeout: float = 30.0,
        sender: str,
        max_attempts: int = 3,
        retry_wait: wait_base | None = None,
        ssl_context_factory: Callable[[], ssl_module.SSLContext] | None = None,
    ) -> None:
        if starttls and ssl:
            raise ValueError("choose STARTTLS or implicit TLS (ssl), not both")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.host = host
        self.port = port
        self.username = username or None
        self._password = password
        self.starttls = starttls
        self.ssl = ssl
        self.timeout = timeout
        self.sender = sender
        # The envelope sender is the bare address of the From header (bounces go there).
        self.envelope_sender = normalise_recipient(parseaddr(sender)[1])
        self._ssl_context_factory = ssl_context_factory or ssl_module.create_default_context
        self._smtp: smtplib.SMTP | None = None
        # The notice whose envelope went out with the last notice's data, its replies not
        # yet read (see `_transaction`).
        self._opened: Upcoming | None = None
        self.connections_opened = 0
        self.retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=retry_wait if retry_wait is not None else _backoff(),
            # A configuration error will not fix itself in a second, and an unknown
            # outcome must not be repeated blindly: both go straight to the caller.
            retry=retry_if_exception_type(TransientDeliveryError)
            & retry_if_not_exception_type((DeliveryConfigurationError, DeliveryOutcomeUnknown,
                                           DeferredDelivery)),
            before_sleep=before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )

    def __repr__(self) -> str:
        password = "'**********'" if self._password is not None else "None"
        return (
            f"SmtpBackend(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password={password}, starttls={self.starttls}, ssl={self.ssl}, "
            f"timeout={self.timeout})"
        )

    # -- connection -------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Remove the password from any text that may end up in an exception or a log."""
        if self._password is not None:
            secret = self._password.get_secret_value()
            if secret:
                text = text.replace(secret, "**********")
        return text

    def open(self) -> None:
        """Connect now (with the same retries as a send), rather than on the first send."""
        if self._smtp is None:
            self.retrying(self._connect)

    def close(self) -> None:
        if self._opened is not None:
            # The next notice's envelope is open and the server waits for its content:
            # a QUIT would be read as content. Closing the socket ends it, undelivered.
            self._drop()
            return
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the server went first; the socket is closed below either way
        finally:
            smtp.close()

    def _drop(self) -> None:
        """Forget the connection without a polite QUIT: it is broken or in an unknown state."""
        self._opened = None
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def _connect(self) -> smtplib.SMTP:
        where = f"{self.host}:{self.port}"
        try:
            smtp = self._new_connection()
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryConfigurationError(
                exc.smtp_code, self._scrub(f"login refused: {_reply_text(exc.smtp_error)}")
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryConfigurationError(None, self._scrub(f"{where}: {exc}")) from None
        except ssl_module.SSLCertVerificationError as exc:
            raise DeliveryConfigurationError(
                None, f"TLS certificate of {where} not trusted: {exc.verify_message}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            text = self._scrub(f"{where} refused the session: {_reply_text(exc.smtp_error)}")
            if 500 <= exc.smtp_code < 600:
                raise DeliveryConfigurationError(exc.smtp_code, text) from None
            raise TransientDeliveryError(exc.smtp_code, text) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(
                None, self._scrub(f"cannot connect to {where}: {exc}")
            ) from None
        self._smtp = smtp
        self.connections_opened += 1
        mode = "implicit TLS" if self.ssl else "STARTTLS" if self.starttls else "no TLS"
        logger.info("connected to SMTP server %s (%s)", where, mode)
        return smtp

    def _new_connection(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP
        if self.ssl:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._ssl_context_factory()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    raise DeliveryConfigurationError(
                        None,
                        f"{self.host}:{self.port} does not offer STARTTLS; "
                        "refusing to send in clear text",
                    )
                # smtplib returns a refusal of STARTTLS instead of raising, and would then
                # carry on in clear text: check the reply ourselves.
                code, reply = smtp.starttls(context=self._ssl_context_factory())
                if code != 220:
                    raise DeliveryConfigurationError(
                        code, f"STARTTLS refused: {_reply_text(reply)}; not sending in clear text"
                    )
                smtp.ehlo()
            if self.username:
                secret = self._password.get_secret_value() if self._password else ""
                smtp.login(self.username, secret)
        except BaseException:
            smtp.close()
            raise
        return smtp

    # -- sending ----------------------------------------------------------------------

    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        address = _recipient_or_permanent(recipient)
        if self._opened is not None and self._opened != (address, message_id):
            # The envelope written with the last notice's data is another notice's (the
            # caller did not send the one it said it would): this content must never go
            # under it, and only a new session ends it without delivering anything.
            self._drop()
        following = _following(upcoming)
        try:
            self._send_retrying(address, message_id, message, following)
        except PermanentDeliveryError as exc:
            logger.warning(
                "notice %s to %s refused permanently: %s", message_id, mask_email(address), exc
            )
            raise
        except TransientDeliveryError as exc:
            logger.warning(
                "notice %s to %s not delivered: %s", message_id, mask_email(address), exc
            )
            raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("sent notice %s to %s", message_id, mask_email(address))

    def _send_retrying(self, recipient: str, message_id: str, message: bytes,
                       following: Upcoming | None) -> None:
        """`_send_once`, retried by `self.retrying` once it has failed.

        The first try is a plain call: tenacity's `Retrying` around it cost 28 us of CPU
        a notice where a sender spent about 700 (measured alone), and almost every notice
        goes through at the first try. A failure is handed to the same `Retrying`, which
        sees it as its own first attempt: which failures are retried, the waits, the log
        line before each wait and the number of attempts are all as before.
        """
        try:
            self._send_once(recipient, message_id, message, following)
            return
        except Exception as exc:  # noqa: BLE001 - `self.retrying` decides, as for any try
            first: list[BaseException] = [exc]

        def attempt() -> None:
            if first:
                raise first.pop()
            self._send_once(recipient, message_id, message, following)

        self.retrying(attempt)

    def _send_once(self, recipient: str, message_id: str, message: bytes,
                   following: Upcoming | None) -> None:
        try:
            reused = self._smtp is not None
            smtp = self._smtp or self._connect()
            try:
                self._transaction(smtp, (recipient, message_id), message, following,
                                  reused=reused)
            except _IdleConnectionClosed:
                # Servers close idle connections (between batches, say). Nothing was said
                # yet, so a fresh connection is simply the first try, not a retry.
                self._drop()
                self._transaction(self._connect(), (recipient, message_id), message,
                                  following, reused=False)
        except DeferredDelivery:
            raise  # the session was reset and stays open for the next notice
        except TransientDeliveryError:
            # The session is broken or in an unknown state: the next try starts afresh.
            self._drop()
            raise

    def _transaction(
        self, smtp: smtplib.SMTP, notice: Upcoming, message: bytes,
        following: Upcoming | None, *, reused: bool
    ) -> None:
        recipient = notice[0]
        stage = "MAIL FROM"
        try:
            opened, self._opened = self._opened, None
            pipelining = smtp.has_extn("pipelining") and self.envelope_sender.isascii()
            if opened == notice or (pipelining and recipient.isascii()):
                if opened != notice:
                    # RFC 2920: MAIL, RCPT and DATA in one write, their three replies
                    # read after it; two round trips a notice instead of four.
                    smtp.send(self._envelope(recipient))
                # (else this envelope went out with the last notice's data: one round
                # trip a notice.)
                mail = smtp.getreply()
                stage = "RCPT TO"
                rcpt = smtp.getreply()
                stage = "DATA"
                data = smtp.getreply()
                if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
                    # The server opened DATA although the envelope was refused: end the
                    # empty message at once; nothing is delivered without a recipient.
                    smtp.send(b".\r\n")
                    smtp.getreply()
                    data = (503, b"no valid envelope")
            else:
                mail = smtp.mail(self.envelope_sender)
                rcpt = data = (0, b"")
            if mail[0] != 250:
                raise self._refused(smtp, *mail, recipient, sender_stage=True)
            stage = "RCPT TO"
            if not rcpt[0]:
                rcpt = smtp.rcpt(recipient)
            if rcpt[0] not in (250, 251):
                raise self._refused(smtp, *rcpt, recipient)
            stage = "DATA"
            if not data[0]:
                smtp.putcmd("data")
                data = smtp.getreply()
            if data[0] != 354:
                raise self._refused(smtp, *data, recipient)
            if pipelining and following is not None and following[0].isascii():
                # RFC 2920 lets message content begin a group: the next notice's envelope
                # goes in the same write as this one's data. Nothing of the next is
                # delivered before its own content follows, and only after this notice's
                # state is written. If the write fails part way, this message may already
                # be whole at the server.
                stage = "end of DATA"
                smtp.send(_dot_stuffed(message) + self._envelope(following[0]))
                self._opened = following
            else:
                smtp.send(_dot_stuffed(message))
            # From here on the server holds the complete message and may have queued it.
            stage = "end of DATA"
            code, reply = smtp.getreply()
            if code != 250:
                raise self._refused(smtp, code, reply, recipient)
        except DeliveryError:
            raise
        except smtplib.SMTPServerDisconnected as exc:
            # smtplib reports a read timeout as a disconnect too; a slow server is not an
            # idle-closed one and gets no free second try.
            timed_out = isinstance(exc.__context__, TimeoutError)
            if reused and stage == "MAIL FROM" and not timed_out:
                raise _IdleConnectionClosed from exc
            raise self._lost(stage, exc, recipient) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise self._lost(stage, exc, recipient) from None

    def _envelope(self, recipient: str) -> bytes:
        return (f"MAIL FROM:{smtp_path(self.envelope_sender)}\r\n"
                f"RCPT TO:{smtp_path(recipient)}\r\nDATA\r\n").encode("ascii")

    def _lost(self, stage: str, exc: BaseException, recipient: str) -> TransientDeliveryError:
        text = self._scrub(_without_address(f"connection lost at {stage}: {exc}", recipient))
        if stage == "end of DATA":
            return DeliveryOutcomeUnknown(None, text)
        return TransientDeliveryError(None, text)

    def _refused(
        self,
        smtp: smtplib.SMTP,
        code: int,
        reply: bytes | str,
        recipient: str,
        *,
        sender_stage: bool = False,
    ) -> DeliveryError:
        text = self._scrub(_without_address(_reply_text(reply), recipient))
        if 500 <= code < 600:
            # The session stays usable after a refusal; reset it for the next message.
            self._reset(smtp)
            if sender_stage:
                # A refused MAIL FROM (sender not allowed, authentication required) is
                # about us, not this recipient: it would refuse every notice alike.
                return DeliveryConfigurationError(code, f"sender refused: {text}")
            return PermanentDeliveryError(code, text)
        if code == 421:
            text = f"server closing the connection: {text}"
            return TransientDeliveryError(code, text)
        # The session is usable after a 4xx reply, as after a 5xx one: reset it for the
        # next notice, which goes on this connection at once.
        self._reset(smtp)
        return DeferredDelivery(code, text)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refusal, unless the refused message's data carried the next
        notice's envelope: the reply to its end of data ended its transaction, and the
        server now reads that envelope (a RSET would be taken as the next one's content)."""
        if self._opened is not None:
            return
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()


BACKOFF_CAP_SECONDS = 5.0


def _backoff() -> wait_base:
    """0.2 s doubling up to 5 s, with jitter so parallel workers do not retry in step."""
    try:
        return wait_exponential_jitter(multiplier=0.2, max=BACKOFF_CAP_SECONDS)
    except TypeError:
        # tenacity before 9.2 calls the first wait `initial` (9.2 renamed it and warns).
        return wait_exponential_jitter(initial=0.2, max=BACKOFF_CAP_SECONDS)


class _IdleConnectionClosed(Exception):
    """Internal: a reused connection was found closed before anything was sent on it."""


def _following(upcoming: Upcoming | None) -> Upcoming | None:
    """The next notice as its envelope would carry it; None if it has no valid address
    (its send will fail on its own, and no envelope is opened for it)."""
    if upcoming is None:
        return None
    try:
        return normalise_recipient(upcoming[0]), upcoming[1]
    except ValueError:
        return None


def _without_address(text: str, address: str) -> str:
    # Servers often quote the recipient back ("<jane@example.com>: no such user"); the
    # text ends up in exceptions and logs, which must not carry full addresses.
    return re.sub(re.escape(address), mask_email(address), text, flags=re.IGNORECASE)


def backend_from_settings(
    settings: Settings, *, smtp_password: SecretStr | None = None
) -> EmailBackend:
    """The backend the settings ask for. `smtp_password` overrides the settings' password
    (a caller may have it from a Prefect Secret block rather than the environment)."""
    if settings.email_backend == EmailBackendName.FILE:
        return FileBackend(settings.email_dir, sync=settings.email_file_sync)
    if settings.email_backend == EmailBackendName.CONSOLE:
        return ConsoleBackend()
    return SmtpBackend(
        settings.smtp_host,
        settings.smtp_port,
        username=settings.smtp_username,
        password=smtp_password if smtp_password is not None else settings.smtp_password,
        starttls=settings.smtp_starttls,
        ssl=settings.smtp_ssl,
        timeout=settings.smtp_timeout_seconds,
        sender=settings.email_from,
    )
