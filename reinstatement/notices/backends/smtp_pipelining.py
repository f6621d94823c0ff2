"""The fast path of the SMTP backend: pipelining (RFC 2920).

Where the server offers PIPELINING, MAIL, RCPT and DATA go in one write and their three
replies are read after it: two round trips a notice instead of four. Told which notice
comes next, the backend writes that notice's envelope in the same write as this one's
data: one round trip a notice. Both steer smtplib below its command-and-reply methods
(`send` for several commands at once, `getreply` for replies read later), relying on its
buffered reader to keep replies that arrive together.

Everything else (connecting, TLS, login, retries, how a failure maps to a
`DeliveryError`) is `SmtpBackend`'s (smtp.py), and a server without PIPELINING gets its
plain transaction. `REINSTATE_SMTP_PIPELINING=false` makes `resources.backend_from_settings` build
the plain backend instead of this one.
"""

from __future__ import annotations

import smtplib

from reinstatement.notices.addresses import normalise_recipient
from reinstatement.notices.backends.base import DeliveryError, Upcoming
from reinstatement.notices.backends.smtp import SmtpBackend, dot_stuffed


def smtp_path(address: str) -> str:
    """The SMTP path (`<address>`) of an address `normalise_recipient` returned.

    What smtplib.quoteaddr makes of it, without parsing it again with email.utils.parseaddr
    (twice a notice, on the sending hot path). A dot-atom local part and a
    letters-digits-hyphens domain, all that normalise_recipient lets through, need no
    quoting (tests/test_email_backends.py checks the two agree).
    """
    return f"<{address}>"


class PipeliningSmtpBackend(SmtpBackend):
    """`SmtpBackend` with pipelined envelopes where the server offers PIPELINING.

    Not thread-safe, as `SmtpBackend`.
    """

    # The notice whose envelope went out with the last notice's data, its replies not yet
    # read (see `_transaction`).
    _opened: Upcoming | None = None

    def close(self) -> None:
        if self._opened is not None:
            # The next notice's envelope is open and the server waits for its content:
            # a QUIT would be read as content. Closing the socket ends it, undelivered.
            self._drop()
            return
        super().close()

    def _drop(self) -> None:
        self._opened = None
        super()._drop()

    def _before_send(self, notice: Upcoming, upcoming: Upcoming | None) -> Upcoming | None:
        if self._opened is not None and self._opened != notice:
            # The envelope written with the last notice's data is another notice's (the
            # caller did not send the one it said it would): this content must never go
            # under it, and only a new session ends it without delivering anything.
            self._drop()
        return _following(upcoming)

    def _transaction(
        self, smtp: smtplib.SMTP, notice: Upcoming, message: bytes,
        following: Upcoming | None, *, reused: bool
    ) -> None:
        opened, self._opened = self._opened, None
        recipient = notice[0]
        if opened != notice and not (smtp.has_extn("pipelining")
                                     and self.envelope_sender.isascii() and recipient.isascii()):
            # The server does not offer pipelining: one command at a time, and no envelope
            # opened early for the next notice.
            super()._transaction(smtp, notice, message, None, reused=reused)
            return
        stage = "MAIL FROM"
        try:
            if opened != notice:
                # MAIL, RCPT and DATA in one write, their three replies read after it.
                smtp.send(self._envelope(recipient))
            # (else this envelope went out with the last notice's data: one round trip a
            # notice.)
            mail = smtp.getreply()
            stage = "RCPT TO"
            rcpt = smtp.getreply()
            stage = "DATA"
            data = smtp.getreply()
            if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
                # The server opened DATA although the envelope was refused: end the empty
                # message at once; nothing is delivered without a recipient.
                smtp.send(b".\r\n")
                smtp.getreply()
                data = (503, b"no valid envelope")
            if mail[0] != 250:
                raise self._refused(smtp, *mail, recipient, sender_stage=True)
            if rcpt[0] not in (250, 251):
                raise self._refused(smtp, *rcpt, recipient)
            if data[0] != 354:
                raise self._refused(smtp, *data, recipient)
            if following is not None and following[0].isascii():
                # RFC 2920 lets message content begin a group: the next notice's envelope
                # goes in the same write as this one's data. Nothing of the next is
                # delivered before its own content follows, and only after this notice's
                # state is written. If the write fails part way, this message may already
                # be whole at the server.
                stage = "end of DATA"
                smtp.send(dot_stuffed(message) + self._envelope(following[0]))
                self._opened = following
            else:
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

    def _envelope(self, recipient: str) -> bytes:
        return (f"MAIL FROM:{smtp_path(self.envelope_sender)}\r\n"
                f"RCPT TO:{smtp_path(recipient)}\r\nDATA\r\n").encode("ascii")

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refusal, unless the refused message's data carried the next
        notice's envelope: the reply to its end of data ended its transaction, and the
        server now reads that envelope (a RSET would be taken as the next one's content)."""
        if self._opened is not None:
            return
        super()._reset(smtp)


def _following(upcoming: Upcoming | None) -> Upcoming | None:
    """The next notice as its envelope would carry it; None if it has no valid address
    (its send will fail on its own, and no envelope is opened for it)."""
    if upcoming is None:
        return None
    try:
        return normalise_recipient(upcoming[0]), upcoming[1]
    except ValueError:
        return None
