"""What every backend shares: the `DeliveryError` family and the `EmailBackend` interface.

What `DeliveryError.permanent` means to a caller: True, this message to this recipient
will never go through, record it and move on; False, it may go later, keep the notice
pending. Configuration problems (no STARTTLS, login refused) are deliberately *not*
permanent: no user should lose their notice because the operator mistyped a setting.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar, Self

from reinstatement.notices.addresses import normalise_recipient

# One logger for every backend, named after the package (as when the backends were one
# module), so that a log configuration naming it still sees each of them.
logger = logging.getLogger(__package__ or __name__)


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


def recipient_or_permanent(recipient: str) -> str:
    """The recipient normalised (`normalise_recipient`); a `PermanentDeliveryError` if it
    is not one valid address, before any backend does anything with it."""
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
