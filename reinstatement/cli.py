"""`reinstate`: the command line of the reinstatement pipeline.

Exit status: 0 on success, 2 on bad input (a message naming what is wrong, and nothing
changed), 1 on failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from reinstatement.errors import BadInput, DatabaseUnavailable
from reinstatement.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="Find wrongly banned accounts, verify them, restore them and tell their owners.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create and migrate the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(command: F) -> F:
    """Turn the pipeline's errors into exit statuses and one clear line on stderr."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (BadInput, SettingsError) as exc:
            _fail(str(exc), 2)
        except DatabaseUnavailable as exc:
            _fail(str(exc), 2)
        except OperationalError as exc:
            _fail(f"database error: {_first_line(exc.orig or exc)}", 1)
        return None

    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _settings() -> Settings:
    return load_settings()


def _engine(settings: Settings) -> Engine:
    from reinstatement.db import get_engine

    engine = get_engine(settings.database_url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {settings.redacted_database_url()}: "
            f"{_first_line(exc.orig or exc)}"
        ) from None
    return engine


@db_app.command("create-platform")
@handles_errors
def db_create_platform() -> None:
    """Create the platform's four tables, for local runs and tests (idempotent)."""
    from reinstatement.schema_admin import create_platform

    created = create_platform(_engine(_settings()))
    typer.echo(f"created: {', '.join(created)}" if created else "platform tables already exist")


@db_app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the pipeline's own migrations (idempotent; never touches platform tables)."""
    from reinstatement.schema_admin import upgrade_pipeline

    before, after = upgrade_pipeline(_engine(_settings()))
    if before == after:
        typer.echo(f"pipeline schema already at {after}")
    else:
        typer.echo(f"pipeline schema upgraded from {before or 'nothing'} to {after}")


@app.command()
@handles_errors
def seed(
    accounts: int = typer.Option(2000, min=1, max=50_000_000, help="How many accounts."),
    seed: int = typer.Option(20250401, help="Random seed: the same seed writes the same rows."),
    pins_per_account: float = typer.Option(5.0, min=0, max=100, help="Average pins each."),
) -> None:
    """Write a realistic synthetic incident into an empty platform database."""
    from reinstatement.seed import PlatformNotEmptyError, SeedOptions
    from reinstatement.seed import seed as write_seed

    settings = _settings()
    engine = _engine(settings)
    options = SeedOptions(accounts=accounts, seed=seed, pins_per_account=pins_per_account)
    try:
        with typer.progressbar(length=accounts, label="seeding", file=sys.stderr) as bar:
            summary = write_seed(engine, options, progress=bar.update)
    except PlatformNotEmptyError as exc:
        raise BadInput(str(exc)) from None
    typer.echo(
        f"seeded {summary.accounts:,} accounts, {summary.enforcement_actions:,} enforcement "
        f"actions and {summary.pins:,} pins in {summary.seconds:.1f} s"
    )
    typer.echo("expected outcomes for the seeded incident: " + ", ".join(
        f"{name} {count:,}" for name, count in sorted(summary.expected_outcomes.items())))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
