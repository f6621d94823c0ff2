"""Deliver rendered notices: one small interface, backends chosen by settings.

The way Django's email backends are laid out: `base` (the interface and the
`DeliveryError` family every backend raises), `smtp` (production: one reused connection,
one command at a time), `smtp_pipelining` (its fast path, the default), `files` (an outbox
of .eml files) and `console`, the last two for local runs, the demo and tests.
`backend_from_settings`, here, is the one place the settings pick a backend.
"""

from __future__ import annotations

from pydantic import SecretStr

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
from reinstatement.settings import EmailBackendName, Settings

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
    "backend_from_settings",
    "mask_email",
    "smtp_path",
]


def backend_from_settings(
    settings: Settings, *, smtp_password: SecretStr | None = None
) -> EmailBackend:
    """The backend the settings ask for. `smtp_password` overrides the settings' password
    (a caller may have it from a Prefect Secret block rather than the environment).

    SMTP pipelining is on unless `REINSTATE_SMTP_PIPELINING` turns it off; off, every
    notice goes one command at a time (`SmtpBackend`)."""
    if settings.email_backend == EmailBackendName.FILE:
        return FileBackend(settings.email_dir, sync=settings.email_file_sync)
    if settings.email_backend == EmailBackendName.CONSOLE:
        return ConsoleBackend()
    smtp = PipeliningSmtpBackend if settings.smtp_pipelining else SmtpBackend
    return smtp(
        settings.smtp_host,
        settings.smtp_port,
        username=settings.smtp_username,
        password=smtp_password if smtp_password is not None else settings.smtp_password,
        starttls=settings.smtp_starttls,
        ssl=settings.smtp_ssl,
        timeout=settings.smtp_timeout_seconds,
        sender=settings.email_from,
    )
