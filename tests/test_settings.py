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
