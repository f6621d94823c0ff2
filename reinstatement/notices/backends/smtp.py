"""The SMTP backend: one connection reused across a batch, one command at a time.

`SmtpBackend` sends each notice with smtplib's command-at-a-time API: MAIL, RCPT, DATA
and the content, each waiting for its reply (four round trips a notice). Each send is
retried on transient failures with tenacity, and every failure is mapped to a
`DeliveryError` that says whether trying again later can help.

`PipeliningSmtpBackend` (smtp_pipelining.py) is the fast path beside it: the same
connection handling, retries and mapping, with a notice's commands written together
where the server allows it. The settings choose between them
(`REINSTATE_SMTP_PIPELINING`), so that a server or proxy that mishandles pipelining can
still be used.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl as ssl_module
from collections.abc import Callable
from email.utils import parseaddr

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

from reinstatement.notices.addresses import normalise_recipient
from reinstatement.notices.backends.base import (
    DeferredDelivery,
    DeliveryConfigurationError,
    DeliveryError,
    DeliveryOutcomeUnknown,
    EmailBackend,
    PermanentDeliveryError,
    TransientDeliveryError,
    Upcoming,
    logger,
    mask_email,
    recipient_or_permanent,
)


def reply_text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: leading dots doubled, CRLF-terminated, then the lone dot.

    A line begins at the start and after each LF, as for a multi-line regular expression
    (`smtplib`'s own way, and the tests' reference); two byte replacements do the same
    for a fraction of its cost, once a notice.
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
            f"{type(self).__name__}(host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password={password}, starttls={self.starttls}, "
            f"ssl={self.ssl}, timeout={self.timeout})"
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
                exc.smtp_code, self._scrub(f"login refused: {reply_text(exc.smtp_error)}")
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryConfigurationError(None, self._scrub(f"{where}: {exc}")) from None
        except ssl_module.SSLCertVerificationError as exc:
            raise DeliveryConfigurationError(
                None, f"TLS certificate of {where} not trusted: {exc.verify_message}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            text = self._scrub(f"{where} refused the session: {reply_text(exc.smtp_error)}")
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
                        code, f"STARTTLS refused: {reply_text(reply)}; not sending in clear text"
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
        address = recipient_or_permanent(recipient)
        following = self._before_send((address, message_id), upcoming)
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

    def _before_send(self, notice: Upcoming, upcoming: Upcoming | None) -> Upcoming | None:
        """Called once a notice, before its first try: the notice whose envelope this
        one's transaction may open early (`_transaction`'s `following`). One command at a
        time opens none early, so `upcoming` is not read here."""
        return None

    def _send_retrying(self, recipient: str, message_id: str, message: bytes,
                       following: Upcoming | None) -> None:
        """`_send_once`, retried by `self.retrying` once it has failed.

        The first try is a plain call, outside tenacity's `Retrying`, whose machinery is a
        measurable part of a sender's CPU a notice, and almost every notice goes through
        at the first try. A failure is handed to the same `Retrying`, which sees it as its
        own first attempt: which failures are retried, the waits, the log line before
        each wait and the number of attempts are all as if it had made that try itself.
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
        """One notice's MAIL, RCPT, DATA and content, each command waiting for its reply.

        The content goes through `send` and `getreply`, as inside smtplib's own `data()`,
        so that a connection lost after the whole message was written (the outcome is
        unknown) is told apart from one lost before. `following` is for a backend that
        opens the next notice's envelope early; this one does not.
        """
        recipient = notice[0]
        stage = "MAIL FROM"
        try:
            code, reply = smtp.mail(self.envelope_sender)
            if code != 250:
                raise self._refused(smtp, code, reply, recipient, sender_stage=True)
            stage = "RCPT TO"
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise self._refused(smtp, code, reply, recipient)
            stage = "DATA"
            code, reply = smtp.docmd("data")
            if code != 354:
                raise self._refused(smtp, code, reply, recipient)
            smtp.send(dot_stuffed(message))
            # From here on the server holds the complete message and may have queued it.
            stage = "end of DATA"
            code, reply = smtp.getreply()
            if code != 250:
                raise self._refused(smtp, code, reply, recipient)
        except DeliveryError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise self._interrupted(stage, exc, recipient, reused=reused) from None

    # -- failures ---------------------------------------------------------------------

    def _interrupted(self, stage: str, exc: BaseException, recipient: str, *,
                     reused: bool) -> Exception:
        """What a conversation cut short at `stage` becomes.

        A reused connection found closed before anything was said on it was closed while
        idle: it is reconnected without using up a try (`_IdleConnectionClosed`).
        smtplib reports a read timeout as a disconnect too; a slow server is not an
        idle-closed one and gets no free second try.
        """
        if (isinstance(exc, smtplib.SMTPServerDisconnected) and reused
                and stage == "MAIL FROM" and not isinstance(exc.__context__, TimeoutError)):
            return _IdleConnectionClosed()
        return self._lost(stage, exc, recipient)

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
        text = self._scrub(_without_address(reply_text(reply), recipient))
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
        """RSET after a refusal, so that the next notice starts a clean transaction."""
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


def _without_address(text: str, address: str) -> str:
    # Servers often quote the recipient back ("<jane@example.com>: no such user"); the
    # text ends up in exceptions and logs, which must not carry full addresses.
    return re.sub(re.escape(address), mask_email(address), text, flags=re.IGNORECASE)
