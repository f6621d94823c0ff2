"""Settings: read from REINSTATE_* variables, normalised, and refused clearly when wrong."""

from __future__ import annotations

import pytest

from reinstatement.settings import EmailBackendName, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("REINSTATE_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///reinstatement.db"
    assert settings.email_backend is EmailBackendName.FILE
    assert str(settings.email_dir) == "outbox"
    assert settings.is_postgresql is False


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/platform", "postgresql+psycopg://u:p@db:5432/platform"),
        ("postgres://u@db/platform", "postgresql+psycopg://u@db/platform"),
        ("postgresql+psycopg://u@db/platform", "postgresql+psycopg://u@db/platform"),
        ("sqlite:////var/lib/reinstate.db", "sqlite:////var/lib/reinstate.db"),
    ],
)
def test_database_urls_are_normalised_to_psycopg_3(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("REINSTATE_DATABASE_URL", given)
    assert load_settings().database_url == expected


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REINSTATE_DATABASE_URL", "mysql://root@localhost/x", "REINSTATE_DATABASE_URL"),
        ("REINSTATE_DATABASE_URL", "postgresql+psycopg2://u@h/d", "psycopg 3"),
        ("REINSTATE_DATABASE_URL", "not a url", "REINSTATE_DATABASE_URL"),
        ("REINSTATE_EMAIL_BACKEND", "pigeon", "REINSTATE_EMAIL_BACKEND"),
        ("REINSTATE_SMTP_PORT", "70000", "REINSTATE_SMTP_PORT"),
        ("REINSTATE_SMTP_PORT", "twenty-five", "REINSTATE_SMTP_PORT"),
        ("REINSTATE_SMTP_STARTTLS", "perhaps", "REINSTATE_SMTP_STARTTLS"),
        ("REINSTATE_EMAIL_FROM", "a@b.c\r\nBcc: x@y.z", "REINSTATE_EMAIL_FROM"),
        ("REINSTATE_BATCH_SIZE", "-5", "REINSTATE_BATCH_SIZE"),
        ("REINSTATE_BATCH_SIZE", "100000000", "REINSTATE_BATCH_SIZE"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_both_tls_modes_at_once_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINSTATE_SMTP_STARTTLS", "true")
    monkeypatch.setenv("REINSTATE_SMTP_SSL", "true")
    with pytest.raises(SettingsError, match="not both"):
        load_settings()


def test_secrets_never_appear_in_reprs_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINSTATE_SMTP_PASSWORD", "hunter2-smtp")
    monkeypatch.setenv("REINSTATE_DATABASE_URL", "postgresql://app:hunter2-db@db/platform")
    settings = load_settings()
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "hunter2-smtp"
    for text in (repr(settings), str(settings), settings.redacted_database_url()):
        assert "hunter2-smtp" not in text
    assert "hunter2-db" not in settings.redacted_database_url()
    monkeypatch.setenv("REINSTATE_SMTP_PORT", "hunter2-port")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "hunter2" not in str(refused.value)


def test_a_child_run_works_with_its_parents_settings_and_its_own_secrets() -> None:
    """A child run (one step fanned out to a worker or `serve`) is handed its parent's
    settings without anything secret, sends where its parent sends, keeps its own
    password, and refuses to work on another database."""
    import json

    from reinstatement.settings import Settings, as_child_of, handed_to_child_runs

    parent = Settings(database_url="postgresql://pipeline:s3cret@db.internal/platform",
                      email_backend="smtp", smtp_host="mail.internal", smtp_port=2525,
                      smtp_password="parent-pw", smtp_password_block="smtp-pw",
                      smtp_connections=3, email_from="Trust <trust@example.com>")
    handed = handed_to_child_runs(parent)
    assert "s3cret" not in json.dumps(handed) and "parent-pw" not in json.dumps(handed)
    stale = Settings(database_url="postgresql://pipeline:s3cret@db.internal/platform",
                     email_backend="file", smtp_password="own-pw")
    child = as_child_of(stale, handed)
    assert (child.email_backend, child.smtp_host, child.smtp_port, child.smtp_connections,
            child.smtp_password_block, child.email_from) == (
        "smtp", "mail.internal", 2525, 3, "smtp-pw", "Trust <trust@example.com>")
    assert child.database_url == stale.database_url  # with its password
    assert child.smtp_password is not None
    assert child.smtp_password.get_secret_value() == "own-pw"
    for other in ("postgresql://pipeline:s3cret@db.internal/staging",
                  "sqlite:///reinstatement.db"):
        with pytest.raises(SettingsError, match="is not the one the incident run works on"):
            as_child_of(Settings(database_url=other), handed)
