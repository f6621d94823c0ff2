"""Notices: the one email each reinstated user gets, and the backends that deliver it.

`render` turns a `NoticeContext` into the bytes of a localised multipart message (its
fast path, `render_frames`, fills each shape of a body rendered once; `mime` encodes the
text for the wire; `addresses` says what a valid recipient and Message-ID are),
`backends` sends those bytes (SMTP, a folder of .eml files, or the console) as chosen by
settings, and `ratelimit` paces sending to what the mail provider allows.
"""

from __future__ import annotations

from reinstatement.notices.addresses import (
    message_id_for,
    normalise_recipient,
    sender_domain,
)
from reinstatement.notices.backends import (
    ConsoleBackend,
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
)
from reinstatement.notices.ratelimit import RateLimiter
from reinstatement.notices.render import (
    SUPPORTED_LOCALES,
    NoticeContent,
    NoticeContext,
    NoticeRenderer,
    resolve_locale,
)

__all__ = [
    "SUPPORTED_LOCALES",
    "ConsoleBackend",
    "DeliveryConfigurationError",
    "DeliveryError",
    "DeliveryOutcomeUnknown",
    "EmailBackend",
    "FileBackend",
    "NoticeContent",
    "NoticeContext",
    "NoticeRenderer",
    "PermanentDeliveryError",
    "PipeliningSmtpBackend",
    "RateLimiter",
    "SmtpBackend",
    "TransientDeliveryError",
    "mask_email",
    "message_id_for",
    "normalise_recipient",
    "resolve_locale",
    "sender_domain",
]
