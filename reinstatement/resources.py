"""One place builds a process's resources: its settings, engine, notice renderer and email
backend with its secret.

A process reads its settings once, on first use (`resources()`), or from its entry point
(`install`, which the CLI calls with the settings it has checked); the engine, renderer
and SMTP password are then built once from them and handed out to flows, tasks, sender
processes, review and the CLI alike. A secret named by a Prefect Secret block
(`REINSTATE_SMTP_PASSWORD_BLOCK`) is read through the resolver the orchestration layer
installs (tasks/__init__.py), so this module knows nothing of Prefect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property

from pydantic import SecretStr
from sqlalchemy import Engine

from reinstatement.notices.backends import (
    ConsoleBackend,
    EmailBackend,
    FileBackend,
    PipeliningSmtpBackend,
    SmtpBackend,
)
from reinstatement.notices.render import NoticeRenderer
from reinstatement.settings import EmailBackendName, Settings, load_settings
from reinstatement.store.engine import get_engine

SecretResolver = Callable[[str], str]


class SecretUnavailable(RuntimeError):
    """A secret the settings name cannot be read in this process."""


def _no_resolver(name: str) -> str:
    raise SecretUnavailable(
        f"the SMTP password is in the Prefect Secret block {name!r}, which only a "
        "process that runs the pipeline's tasks can read")


class Resources:
    """A process's settings and what is built from them, each built once on first use."""

    def __init__(self, settings: Settings, secret_resolver: SecretResolver | None = None
                 ) -> None:
        self.settings = settings
        self._secret_resolver = secret_resolver

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings.database_url)

    @cached_property
    def renderer(self) -> NoticeRenderer:
        return NoticeRenderer()

    @cached_property
    def smtp_password(self) -> SecretStr | None:
        """From the Prefect Secret block the settings name, if one is; else the setting."""
        block = self.settings.smtp_password_block
        if not block:
            return self.settings.smtp_password
        resolve = self._secret_resolver or _secret_resolver or _no_resolver
        return SecretStr(resolve(block))

    def email_backend(self) -> EmailBackend:
        """A new backend (one per sending thread or batch: an SMTP backend holds one
        connection) as the settings ask, with the password."""
        return backend_from_settings(self.settings, smtp_password=self.smtp_password)



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

_lock = threading.Lock()
_process: Resources | None = None
_secret_resolver: SecretResolver | None = None


def resources() -> Resources:
    """This process's resources; its settings are read from the environment the first time."""
    global _process
    with _lock:
        if _process is None:
            _process = Resources(load_settings())
        return _process


def install(settings: Settings) -> Resources:
    """Make `settings` (read and checked by the process's entry point) this process's."""
    global _process
    with _lock:
        _process = Resources(settings)
        return _process


def set_secret_resolver(resolver: SecretResolver) -> None:
    """How this process reads a secret named in its settings (a Prefect Secret block)."""
    global _secret_resolver
    _secret_resolver = resolver


def forget() -> None:
    """Read the settings again on next use (tests that change the environment)."""
    global _process
    with _lock:
        _process = None
