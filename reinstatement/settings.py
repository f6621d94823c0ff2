"""The pipeline's settings: one class, read from `REINSTATE_*` environment variables.

A bad value is refused at start-up with a message naming the variable, so an operator
never finds out halfway through an incident that the mail server's port was a typo.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class EmailBackendName(StrEnum):
    FILE = "file"
    CONSOLE = "console"
    SMTP = "smtp"


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each variable and what is wrong."""


DEFAULT_DATABASE_URL = "sqlite:///reinstatement.db"


def normalise_database_url(url: str) -> str:
    """Accept the URL forms operators paste and pin PostgreSQL to the psycopg 3 driver."""
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ValueError(f"unsupported database {backend!r}: use postgresql:// or sqlite:///")
    if backend == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise ValueError(
            f"PostgreSQL driver {parsed.get_driver_name()!r} is not supported: use psycopg 3 "
            "(postgresql:// or postgresql+psycopg://)"
        )
    return url


class Settings(BaseSettings):
    """Everything the pipeline reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="REINSTATE_",
        env_file=None,
        extra="ignore",
        validate_default=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the platform database; postgresql:// uses psycopg 3.",
    )
    email_backend: EmailBackendName = Field(
        EmailBackendName.FILE, description="Where notices go: file, console or smtp."
    )
    email_dir: Path = Field(
        Path("outbox"), description="Folder for the file backend: one .eml per notice."
    )
    email_file_sync: Literal["batch", "each", "none"] = Field(
        "batch", description="When the file backend's notices are made durable against a "
        "power loss: at the end of each batch (one syncfs), after each file, or never."
    )
    email_from: str = Field(
        "Trust & Safety <trust-and-safety@example.com>",
        description="The From header of every notice.",
    )
    smtp_host: str = Field("localhost", description="SMTP server host.")
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        25, description="SMTP server port."
    )
    smtp_username: str | None = Field(None, description="SMTP user, if the server needs one.")
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password: a secret, never printed."
    )
    smtp_password_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the SMTP password (instead of "
        "REINSTATE_SMTP_PASSWORD).",
    )
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_ssl: bool = Field(False, description="Connect with implicit TLS (port 465 style).")
    smtp_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0, description="Connect and send timeout."
    )
    smtp_pipelining: bool = Field(
        True, description="Pipeline SMTP commands (RFC 2920) where the server offers it: "
        "one or two round trips a notice instead of four. false: one command at a time, "
        "for a server or proxy that mishandles pipelining."
    )
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = Field(
        5000, description="Default number of cases per batch task."
    )
    workers: Annotated[int, Field(ge=1, le=8)] = Field(
        2, description="Batch tasks of one step that run at once in one flow run (the "
        "global limit reinstatement-database-batches caps them across all runs), and the "
        "parts of the account ids planning walks at once on PostgreSQL."
    )
    smtp_connections: Annotated[int, Field(ge=1, le=8)] = Field(
        2, description="SMTP connections one flow run opens at once, one per sending task "
        "(the global limit reinstatement-smtp-connections caps them across all runs)."
    )
    limit_lease_seconds: Annotated[int, Field(ge=60, le=86_400)] = Field(
        60, description="Lease on a slot of a global concurrency limit: a process that "
        "dies holding one gives it back after this (Prefect's server frees expired leases "
        "every 15 s; its minimum is 60)."
    )
    sender_processes: bool = Field(
        False, description="Send each batch of notices from a child process of its own (one "
        "per SMTP connection), not from a thread of the flow's process: about twice the "
        "notices per second on two cores; the exactly-once guarantee is the same."
    )
    notify_retry_wait_seconds: Annotated[int, Field(ge=0, le=3600)] = Field(
        120, description="How long the notify step may wait, in all, for notices a mail "
        "server deferred (4xx, greylisting) to come due again and send them in the same "
        "run; no connection is held meanwhile. 0: leave them to the next run."
    )
    notify_rate_per_second: Annotated[float, Field(ge=0, le=100_000)] = Field(
        0, description="Most notices sent per second across this process; 0: no limit."
    )
    notice_lease_seconds: Annotated[int, Field(ge=1, le=86_400)] = Field(
        600,
        description="How long a claimed notice is held in 'sending' before another run "
        "may take it over (a crashed sender's notices are sent again after this).",
    )
    alert_block: str | None = Field(
        None, description="The Prefect notification block the operators' alerts go "
        "through, as block-type-slug/block-name (slack-webhook/ops-alerts, "
        "custom-webhook/ops-alerts): `reinstate deploy` and `reinstate serve` create the "
        "pipeline's automations with it. Unset: no automations are created."
    )
    alert_approval_hours: Annotated[float, Field(ge=0.003, le=720)] = Field(
        24.0, description="How long an incident may await approval before the alert block "
        "is told (fractions accepted, down to 0.003: about 11 seconds, Prefect's least)."
    )

    @field_validator("alert_block")
    @classmethod
    def _block_slug_and_name(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        slug, _, name = value.strip().partition("/")
        if not slug.strip() or not name.strip() or "/" in name:
            raise ValueError("give the notification block as block-type-slug/block-name, "
                             "e.g. slack-webhook/ops-alerts")
        return f"{slug.strip()}/{name.strip()}"

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("email_from")
    @classmethod
    def _single_line_sender(cls, value: str) -> str:
        if "\r" in value or "\n" in value or not value.strip():
            raise ValueError("must be one non-empty line")
        return value.strip()

    @field_validator("smtp_ssl")
    @classmethod
    def _not_both_tls_modes(cls, value: bool, info: object) -> bool:
        data = getattr(info, "data", {})
        if value and data.get("smtp_starttls"):
            raise ValueError("choose REINSTATE_SMTP_STARTTLS or REINSTATE_SMTP_SSL, not both")
        return value

    @property
    def is_postgresql(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "postgresql"

    def redacted_database_url(self) -> str:
        """The database URL with any password hidden, for messages and logs."""
        return make_url(self.database_url).render_as_string(hide_password=True)


# A child run is handed its parent's settings, except those that are secret: the password
# stays in each process's own environment (or the Secret block named), and the database
# URL is compared with its password hidden.
_KEPT_BY_THE_CHILD = ("database_url", "smtp_password")


def handed_to_child_runs(settings: Settings) -> dict[str, object]:
    """The settings a run hands to the child runs it launches (a flow-run parameter, so
    nothing secret: no password, the database URL with its password hidden)."""
    values = settings.model_dump(mode="json", exclude=set(_KEPT_BY_THE_CHILD))
    values["database_url"] = settings.redacted_database_url()
    return values


def as_child_of(own: Settings, parent: dict[str, object]) -> Settings:
    """The settings a child run works with: its parent's, with this process's database
    URL and password, once the database is shown to be the parent's. A process started
    with other settings (a `reinstate serve` left running after `reinstate deploy`, a
    worker with another mail server) then sends where the incident run sends; one with
    another database refuses the run (SettingsError) and changes nothing."""
    theirs = str(parent.get("database_url", ""))
    if theirs != own.redacted_database_url():
        raise SettingsError(
            f"this process's database ({own.redacted_database_url()}) is not the one the "
            f"incident run works on ({theirs}): start its workers with the same "
            "REINSTATE_DATABASE_URL")
    values = {k: v for k, v in parent.items() if k not in _KEPT_BY_THE_CHILD}
    try:
        return Settings.model_validate({**values, "database_url": own.database_url,
                                        "smtp_password": own.smtp_password})
    except ValidationError as exc:
        raise SettingsError(f"the incident run's settings cannot be used here: {exc}"
                            ) from None


def load_settings() -> Settings:
    """Read the settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "REINSTATE_" + "_".join(str(p) for p in error["loc"]).upper()
            # Never echo the rejected value: it may be a password.
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("bad settings: " + "; ".join(problems)) from None
