"""Deliver rendered notices: one small interface, backends chosen by settings.

The way Django's email backends are laid out: `base` (the interface and the
`DeliveryError` family every backend raises), `smtp` (production: one reused connection,
one command at a time), `smtp_pipelining` (its fast path, the default), `files` (an outbox
of .eml files) and `console`, the last two for local runs, the demo and tests.
`reinstatement.resources.backend_from_settings` is the one place the settings pick a
backend.
"""

from __future__ import annotations

from reinstatement.notices.backends.base import (
    DeferredDelivery,
    DeliveryConfigurationError,
    DeliveryError,
    DeliveryOutcomeUnknown,
    EmailBackend,
    PermanentDeliveryError,
    TransientDeliveryError,
    Upcoming,
    mask_email,
)
from reinstatement.notices.backends.console import ConsoleBackend
from reinstatement.notices.backends.files import FileBackend
from reinstatement.notices.backends.smtp import BACKOFF_CAP_SECONDS, SmtpBackend
from reinstatement.notices.backends.smtp_pipelining import PipeliningSmtpBackend, smtp_path

__all__ = [
    "BACKOFF_CAP_SECONDS",
    "ConsoleBackend",
    "DeferredDelivery",
    "DeliveryConfigurationError",
    "DeliveryError",
    "DeliveryOutcomeUnknown",
    "EmailBackend",
    "FileBackend",
    "PermanentDeliveryError",
    "PipeliningSmtpBackend",
    "SmtpBackend",
    "TransientDeliveryError",
    "Upcoming",
    "mask_email",
    "smtp_path",
]
