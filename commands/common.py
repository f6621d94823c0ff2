"""What every `reinstate` command shares: the app, the one line and exit status for each
kind of error, the settings and the checked engine.

Exit status: 0 on success, 2 on bad input (a message naming what is wrong, and nothing
changed), 1 on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar, cast

import typer
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from commands.local_prefect import (
    SERVER_DID_NOT_START,
    is_startup_failure,
)
from reinstatement import resources
from reinstatement.errors import BadInput, DatabaseUnavailable
from reinstatement.settings import Settings, SettingsError

app = typer.Typer(
    help="Find wrongly banned accounts, verify them, restore them and tell their owners.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create and migrate the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(command: F) -> F:
    """Turn the pipeline's errors into exit statuses and one clear line on stderr."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A command is its process's entry point: it reads the settings once, on first use.
        resources.forget()
        try:
            return command(*args, **kwargs)
        except (BadInput, SettingsError) as exc:
            fail(str(exc), 2)
        except DatabaseUnavailable as exc:
            fail(str(exc), 2)
        except OperationalError as exc:
            fail(f"database error: {first_line(exc.orig or exc)}", 1)
        except SQLAlchemyError as exc:
            fail(f"database error: {first_line(exc)}", 1)
        except RuntimeError as exc:
            if is_startup_failure(exc):
                fail(SERVER_DID_NOT_START, 1)
            # A run that failed (batches failing after their retries, broken invariants):
            # the run's logs and Prefect's UI have the details.
            fail(f"{type(exc).__name__}: {first_line(exc)}", 1)
        return None

    return wrapper  # type: ignore[return-value]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def process_settings() -> Settings:
    return resources.resources().settings


def redacted_url(settings: Settings) -> str:
    """The database URL for messages: the password hidden, in the URL's query too."""
    parsed = make_url(settings.database_url)
    secret = [name for name in parsed.query if "password" in name.lower()]
    if secret:
        parsed = parsed.update_query_dict(dict.fromkeys(secret, "***"))
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def engine_for(settings: Settings, *, create: bool = False) -> Engine:
    """The engine, once the database answers; a missing SQLite file is only made if `create`."""
    from reinstatement.store.engine import get_engine, missing_database_file

    if not create and missing_database_file(settings.database_url):
        raise DatabaseUnavailable(
            f"cannot reach the database at {redacted_url(settings)}: no such file (create "
            "it with `reinstate db create-platform`)"
        )
    engine = get_engine(settings.database_url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {redacted_url(settings)}: "
            f"{first_line(exc.orig or exc)}"
        ) from None
    return engine



def require_platform_tables(engine: Engine) -> None:
    from reinstatement.platform_schema import PLATFORM_TABLES

    with engine.connect() as conn:
        existing = set(inspect(conn).get_table_names())
    missing = [name for name in PLATFORM_TABLES if name not in existing]
    if missing:
        raise BadInput(f"the platform tables {', '.join(missing)} are missing: is this the "
                       "platform's database? (for local runs: `reinstate db create-platform`)")


def require_pipeline_schema(engine: Engine) -> None:
    from reinstatement.store.schema import current_revision, head_revision

    require_platform_tables(engine)
    if current_revision(engine) != head_revision():
        raise BadInput("the pipeline's tables are missing or out of date: run "
                       "`reinstate db upgrade` first")


def parse_moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise BadInput(f"{option}: {value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise BadInput(f"{option}: {value!r} has no time zone: add Z or an offset such as "
                       "+00:00")
    return moment



def checked_engine() -> Engine:
    """The database engine, after checking both schemas are in place (for operators' commands)."""
    engine = engine_for(process_settings())
    require_platform_tables(engine)
    require_pipeline_schema(engine)
    return engine


def run_flow(engine: Engine, request: Any) -> dict[str, Any]:
    from flows.reinstate_incident import reinstate_incident
    from reinstatement.progress import ProgressWatcher

    with ProgressWatcher(engine, request.incident_key):
        result = reinstate_incident(request)
    return cast(dict[str, Any], result)


def print_report(report: dict[str, Any]) -> None:
    typer.echo(f"incident {report['incident']}: {report['status']}")
    if report["status_words"] != report["status"]:
        typer.echo(f"  {report['status_words']}")
    if report.get("declared_by"):
        typer.echo(f"  declared by {report['declared_by']}")
    plan = report.get("plan")
    if plan:
        typer.echo(f"  plan {plan['short']} ({plan['cases']:,} cases, "
                   f"{plan['state']}): {plan['digest']}")
    decision = report.get("decision")
    if decision and report["status"] != "rejected":
        typer.echo(f"  {decision['decision']}d plan {decision['plan'] or '-'} by "
                   f"{decision['by']} at {decision['at']}"
                   + (f": {decision['note']}" if decision["note"] else ""))
    width = max(len(o) for o in report["outcomes"])
    for outcome, count in report["outcomes"].items():
        typer.echo(f"  {outcome:<{width}}  {count:>10,}")
    if report["preview_outcomes"]:
        typer.echo("  preview (dry run, nothing changed):")
        for outcome, count in sorted(report["preview_outcomes"].items()):
            typer.echo(f"    {outcome:<{width}}  {count:>10,}")
    typer.echo(f"  pins restored  {report['pins_restored']:,}")
    if report["notices"]:
        typer.echo("  notices: " + ", ".join(
            f"{state} {count:,}" for state, count in sorted(report["notices"].items())))


def record_ended_waits() -> None:
    """Runs that waited for a decision and that an operator cancelled in the Prefect UI
    are recorded as such before incidents are shown (Prefect runs no code of ours for
    that cancel). Only where some run waits, and only with a Prefect server to ask."""
    from reinstatement import runs

    with resources.resources().engine.connect() as conn:
        if not runs.waiting_runs(conn):
            return
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return
    from tasks.waits import record_ended_waits as record

    record(publish=False)
