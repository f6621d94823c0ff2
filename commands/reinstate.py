"""`reinstate`: the command line of the reinstatement pipeline.

Exit status: 0 on success, 2 on bad input (a message naming what is wrong, and nothing
changed), 1 on failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

import typer
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from commands import operations as cli_operations
from commands.local_prefect import (
    SERVER_DID_NOT_START,
    is_startup_failure,
    prepare_local_prefect,
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


def _fail(message: str, code: int) -> None:
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
            _fail(str(exc), 2)
        except DatabaseUnavailable as exc:
            _fail(str(exc), 2)
        except OperationalError as exc:
            _fail(f"database error: {_first_line(exc.orig or exc)}", 1)
        except SQLAlchemyError as exc:
            _fail(f"database error: {_first_line(exc)}", 1)
        except RuntimeError as exc:
            if is_startup_failure(exc):
                _fail(SERVER_DID_NOT_START, 1)
            # A run that failed (batches failing after their retries, broken invariants):
            # the run's logs and Prefect's UI have the details.
            _fail(f"{type(exc).__name__}: {_first_line(exc)}", 1)
        return None

    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _settings() -> Settings:
    return resources.resources().settings


def _redacted_url(settings: Settings) -> str:
    """The database URL for messages: the password hidden, in the URL's query too."""
    parsed = make_url(settings.database_url)
    secret = [name for name in parsed.query if "password" in name.lower()]
    if secret:
        parsed = parsed.update_query_dict(dict.fromkeys(secret, "***"))
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def _engine(settings: Settings, *, create: bool = False) -> Engine:
    """The engine, once the database answers; a missing SQLite file is only made if `create`."""
    from reinstatement.store.engine import get_engine, missing_database_file

    if not create and missing_database_file(settings.database_url):
        raise DatabaseUnavailable(
            f"cannot reach the database at {_redacted_url(settings)}: no such file (create "
            "it with `reinstate db create-platform`)"
        )
    engine = get_engine(settings.database_url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {_redacted_url(settings)}: "
            f"{_first_line(exc.orig or exc)}"
        ) from None
    return engine


@db_app.command("create-platform")
@handles_errors
def db_create_platform() -> None:
    """Create the platform's four tables, for local runs and tests (idempotent)."""
    from reinstatement.store.schema import create_platform

    created = create_platform(_engine(_settings(), create=True))
    typer.echo(f"created: {', '.join(created)}" if created else "platform tables already exist")


@db_app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the pipeline's own migrations (idempotent; never touches platform tables)."""
    from reinstatement.store.schema import upgrade_pipeline

    before, after = upgrade_pipeline(_engine(_settings(), create=True))
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
    shape: str = typer.Option("standard", help="standard, or mixed: the incident also names "
                              "a version with no correction, evidence carries many signals, "
                              "banned accounts carry reversed older bans."),
    scenario: str = typer.Option(
        "incident", help="incident: a mass ban to reinstate; detection: a ban history of "
        "healthy rules and version changes with planted faults, for `reinstate detect`."),
    plant_fault: list[str] | None = typer.Option(
        None, "--plant-fault", help="RULE@V:FACTOR:HOURS: version V of RULE bans FACTOR "
        "times its predecessor's rate for HOURS (implies --scenario detection; default: "
        "spam_links@3:8:96 and fake_engagement@4:3:48)."),
    days: int = typer.Option(30, help="Days of ban history (--scenario detection)."),
) -> None:
    """Write a realistic synthetic incident (or ban history) into an empty platform
    database."""
    from reinstatement.seed import SHAPES, PlatformNotEmptyError, SeedOptions
    from reinstatement.seed import seed as write_seed

    if scenario not in ("incident", "detection"):
        raise BadInput(f"--scenario: {scenario!r} is not one of incident, detection")
    if shape not in SHAPES:
        raise BadInput(f"--shape: {shape!r} is not one of {', '.join(SHAPES)}")
    if scenario == "detection" or plant_fault:
        _seed_history(seed, days, plant_fault)
        return
    settings = _settings()
    engine = _engine(settings)
    _require_platform_tables(engine)
    options = SeedOptions(accounts=accounts, seed=seed, pins_per_account=pins_per_account,
                          shape=shape)
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
    from reinstatement.seed import incident_description

    for line in incident_description(shape):
        typer.echo(line)


def _seed_history(seed_number: int, days: int, faults: list[str] | None) -> None:
    from reinstatement.seed import PlatformNotEmptyError
    from reinstatement.seed_history import (
        DEFAULT_FAULTS,
        HistoryOptions,
        history_description,
        seed_history,
    )

    options = HistoryOptions(days=days, seed=seed_number,
                             faults=tuple(faults) if faults else DEFAULT_FAULTS)
    options.planted()  # bad input is refused before anything is written
    engine = _engine(_settings())
    _require_platform_tables(engine)
    try:
        summary = seed_history(engine, options)
    except PlatformNotEmptyError as exc:
        raise BadInput(str(exc)) from None
    for line in history_description(summary, options):
        typer.echo(line)


@app.command()
@handles_errors
def detect(
    since: str | None = typer.Option(None, help="From (ISO 8601; default: 30 days before "
                                     "--until)."),
    until: str | None = typer.Option(None, help="Before (ISO 8601; default: now)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per suspect."),
) -> None:
    """Rule versions whose bans look like a fault, and why; each with a draft incident to
    preview. Changes nothing."""
    from datetime import UTC, timedelta

    from reinstatement.detection import detect as find_suspects

    end = _parse_moment(until, "--until") or datetime.now(UTC)
    start = _parse_moment(since, "--since") or end - timedelta(days=30)
    if start >= end:
        raise BadInput(f"--since ({start.isoformat()}) must be before --until "
                       f"({end.isoformat()})")
    if end - start > timedelta(days=400):
        raise BadInput("--since and --until: at most 400 days at a time")
    engine = _engine(_settings())
    _require_platform_tables(engine)
    suspects = find_suspects(engine, start, end)
    if as_json:
        for suspect in suspects:
            typer.echo(json.dumps(suspect.as_json(), sort_keys=True))
        return
    typer.echo(f"{len(suspects)} suspect rule version(s) from {start.isoformat()} to "
               f"{end.isoformat()}" + (":" if suspects else ""))
    if not suspects:
        return
    header = (f"  {'version':<28} {'since (UTC)':<17} {'until (UTC)':<17} {'bans':>9} "
              f"{'rate/h':>8} {'baseline/h':>10} {'score':>9}")
    typer.echo(header)
    for suspect in suspects:
        typer.echo(f"  {suspect.version:<28} {suspect.since:%Y-%m-%d %H:%M} "
                   f"{suspect.until:%Y-%m-%d %H:%M} {suspect.bans:>9,} {suspect.rate:>8.1f} "
                   f"{suspect.baseline_rate:>10.1f} {suspect.score:>9.0f}")
    for suspect in suspects:
        typer.echo(f"{suspect.version} ({suspect.status}, baseline {suspect.baseline}): "
                   + "; ".join(suspect.reasons))
        typer.echo(f"  preview: reinstate run {suspect.key} {suspect.declaration} --dry-run")
    typer.echo("a suspect restores nothing: preview it, have the rules team mark the "
               "version 'faulty', then approve its plan as for any incident")


def _require_platform_tables(engine: Engine) -> None:
    from reinstatement.platform_schema import PLATFORM_TABLES

    with engine.connect() as conn:
        existing = set(inspect(conn).get_table_names())
    missing = [name for name in PLATFORM_TABLES if name not in existing]
    if missing:
        raise BadInput(f"the platform tables {', '.join(missing)} are missing: is this the "
                       "platform's database? (for local runs: `reinstate db create-platform`)")


def _require_pipeline_schema(engine: Engine) -> None:
    from reinstatement.store.schema import current_revision, head_revision

    _require_platform_tables(engine)
    if current_revision(engine) != head_revision():
        raise BadInput("the pipeline's tables are missing or out of date: run "
                       "`reinstate db upgrade` first")


def _parse_moment(value: str | None, option: str) -> datetime | None:
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


@app.command()
@handles_errors
def run(
    key: str = typer.Argument(..., help="The incident key, e.g. INC-2025-04-spam."),
    faulty: list[str] | None = typer.Option(
        None, "--faulty", help="NAME@V, or NAME@V=NAME@W to name the corrected version. "
        "Leave out (with the rest of the declaration) to continue a registered incident."
    ),
    since: str | None = typer.Option(None, help="Bans created at or after (ISO 8601)."),
    until: str | None = typer.Option(None, help="Bans created before (ISO 8601)."),
    accounts_file: Path | None = typer.Option(
        None, help="Only these account ids: one per line, # comments allowed."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Preview outcomes; change nothing."),
    no_notify: bool = typer.Option(False, "--no-notify", help="Restore without emailing."),
    batch_size: int | None = typer.Option(None, help="Cases per batch task."),
    require_approval: bool | None = typer.Option(
        None, "--require-approval/--no-require-approval",
        help="Restore nothing until another person approves the plan (fixed for the key "
        "when first registered; default: off for a new key, as registered for a known one).",
    ),
    child_runs: int = typer.Option(
        1, min=1, max=32,
        help="Fan each step out to this many child runs on the work pool's workers "
        "(needs PREFECT_API_URL and `reinstate deploy`); 1: this process runs every batch.",
    ),
) -> None:
    """Run (or continue) the reinstatement of one incident."""
    from reinstatement import account_lists, planner_statistics
    from reinstatement.incident_request import build_request, read_account_ids
    from reinstatement.incidents import check_request, registered_parameters, registered_request

    settings = _settings()
    engine = _engine(settings)
    _require_pipeline_schema(engine)
    operational = {"dry_run": dry_run,
                   "batch_size": settings.batch_size if batch_size is None else batch_size,
                   "child_runs": child_runs}
    # A list of accounts goes to the database, never into the run's parameters; it is
    # written there once the request is known to be good (bad input changes nothing).
    listed = None if accounts_file is None or not faulty else account_lists.normalised(
        read_account_ids(accounts_file))
    staged = None if listed is None else str(account_lists.reference_of(listed))
    with engine.connect() as conn:
        registered = registered_parameters(conn, key)
        if not faulty:
            given = [option for option, value in (
                ("--since", since), ("--until", until), ("--accounts-file", accounts_file),
                ("--no-notify", no_notify or None)) if value is not None]
            if given:
                raise BadInput(f"{given[0]} is part of an incident's declaration: give the "
                               "whole declaration (--faulty ...) or none of it to continue "
                               "a registered incident")
            request = registered_request(conn, key, **operational)
            if require_approval is not None:
                request = request.model_copy(update={"require_approval": require_approval})
        else:
            if require_approval is None:  # as registered; off for a new key on the CLI
                require_approval = bool(registered and registered.get("require_approval"))
            request = build_request(
                incident_key=key,
                faulty_versions=faulty,
                since=_parse_moment(since, "--since"),
                until=_parse_moment(until, "--until"),
                account_list=staged,
                notify=not no_notify,
                require_approval=require_approval,
                **operational,
            )
        check_request(conn, request)
    # Before anything is written: a platform without statistics the pipeline may not make
    # is refused here in one line (the flow asks again, for runs started elsewhere).
    planner_statistics.refresh(engine)
    if listed is not None:
        account_lists.stage(engine, listed)
    report = _run_flow(engine, request)
    _print_report(report)


def _run_flow(engine: Engine, request: Any) -> dict[str, Any]:
    from flows.reinstate_incident import reinstate_incident
    from reinstatement.progress import ProgressWatcher

    with ProgressWatcher(engine, request.incident_key):
        result = reinstate_incident(request)
    return cast(dict[str, Any], result)


def _print_report(report: dict[str, Any]) -> None:
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


@app.command()
@handles_errors
def report(
    key: str = typer.Argument(..., help="The incident key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Counts per outcome and per notice state, and the runs' timings."""
    from reinstatement.reports import incident_report

    engine = _engine(_settings())
    _require_pipeline_schema(engine)
    with engine.connect() as conn:
        result = incident_report(conn, key)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    _print_report(result)
    for run in result["runs"]:
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in run["step_seconds"].items())
        typer.echo(f"  run {run['started_at']} {'dry ' if run['dry_run'] else ''}"
                   f"{run['status']}: {steps or 'no step finished'}")
        for place in run.get("workers", []):
            typer.echo(f"    {place['step']:<8} {place['batches']:>6,} batches "
                       f"{place['cases']:>10,} cases  on {place['host']} process "
                       f"{place['pid']}" + (f" (worker {place['worker']})"
                                            if place["worker"] else ""))


@app.command()
@handles_errors
def plan(
    key: str = typer.Argument(..., help="The incident key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    cases: bool = typer.Option(False, "--cases", help="Also every case the plan holds (with "
                               "--json: one JSON object per line after the plan's)."),
) -> None:
    """The incident's newest plan: its digest, counts per verdict, and what was decided."""
    from reinstatement.reports import plan_report

    engine = _engine(_settings())
    _require_pipeline_schema(engine)
    with engine.connect() as conn:
        result = plan_report(conn, key)
        if as_json:
            typer.echo(json.dumps(result, sort_keys=True))
        else:
            _print_plan(result)
        if cases and result["plan"] is not None:
            from reinstatement.plans import plan_entries

            for entry in plan_entries(conn, result["plan"]["id"]):
                if as_json:
                    typer.echo(json.dumps(vars(entry), sort_keys=True))
                else:
                    typer.echo(f"{entry.case_id:>8} {entry.account_id:>10} round "
                               f"{entry.round} {entry.verdict or '-':<15} "
                               f"{entry.ban_ids or '-'}")


def _print_plan(result: dict[str, Any]) -> None:
    typer.echo(f"incident {result['incident']}: {result['status']}")
    plan = result["plan"]
    if plan is None:
        typer.echo("  no plan yet: run the incident (a dry run will do) to preview it")
        return
    typer.echo(f"  plan {plan['short']}: {plan['digest']}")
    typer.echo(f"  made {plan['created_at']} by {plan['created_by']}"
               + (" (dry run)" if plan["dry_run"] else "") + f"; {plan['state']}")
    width = max((len(v) for v in plan["counts"]), default=0)
    for verdict, count in plan["counts"].items():
        typer.echo(f"    {verdict:<{width}}  {count:>10,}")
    typer.echo(f"    {'total':<{width}}  {plan['cases']:>10,}")
    for decision in result["decisions"]:
        typer.echo(f"  {decision['decision']}d plan {decision['plan'] or '-'} by "
                   f"{decision['by']} ({decision['via']}) at {decision['at']}"
                   + (f": {decision['note']}" if decision["note"] else ""))
    if result["status"] == "awaiting_approval":
        typer.echo(f"  approve it: reinstate approve {result['incident']} --plan "
                   f"{plan['short']} (by someone other than {result['declared_by'] or '-'})")


@app.command()
@handles_errors
def cases(
    key: str = typer.Argument(..., help="The incident key."),
    outcome: str | None = typer.Option(None, help="Only this outcome."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Every case of an incident with its outcome and why."""
    from reinstatement.reports import OUTCOMES, iter_cases

    if outcome is not None and outcome not in OUTCOMES:
        raise BadInput(f"--outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
    engine = _engine(_settings())
    _require_pipeline_schema(engine)
    with engine.connect() as conn:
        for case in iter_cases(conn, key, outcome):
            if as_json:
                typer.echo(json.dumps(case, sort_keys=True, ensure_ascii=False))
            else:
                summary = (case["reasons"] or {}).get("summary", "")
                typer.echo(f"{case['case_id']:>8} {case['account_id']:>10} "
                           f"{case['outcome'] or '-':<15} {case['state']:<10} {summary}")


@app.command()
@handles_errors
def demo(
    accounts: int = typer.Option(2000, min=10, max=200_000, help="Accounts in the demo."),
    folder: Path = typer.Option(Path("demo"), help="Where the demo's database and notices go."),
) -> None:
    """From nothing: create a database, seed an incident, reinstate it, print a summary."""
    import os

    from reinstatement import seed as seeding

    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "reinstatement.db"
    outbox = folder / "outbox"
    for stale in (database, database.with_name(database.name + "-wal"),
                  database.with_name(database.name + "-shm")):
        stale.unlink(missing_ok=True)
    if outbox.exists():
        for old in outbox.glob("*.eml"):
            old.unlink()
    os.environ["REINSTATE_DATABASE_URL"] = f"sqlite:///{database.resolve()}"
    os.environ["REINSTATE_EMAIL_BACKEND"] = "file"
    os.environ["REINSTATE_EMAIL_DIR"] = str(outbox.resolve())
    settings = _settings()
    engine = _engine(settings, create=True)
    from reinstatement.store.schema import create_platform, upgrade_pipeline

    create_platform(engine)
    upgrade_pipeline(engine)
    summary = seeding.seed(engine, seeding.SeedOptions(accounts=accounts))
    typer.echo(f"seeded {summary.accounts:,} accounts and {summary.pins:,} pins into "
               f"{database}")
    from reinstatement.incident_request import build_request

    request = build_request(
        incident_key=seeding.INCIDENT_KEY,
        faulty_versions=list(seeding.INCIDENT_FAULTY),
        since=seeding.INCIDENT_SINCE,
        until=seeding.INCIDENT_UNTIL,
        batch_size=500,
        require_approval=False,
    )
    result = _run_flow(engine, request)
    typer.echo("")
    _print_report(result)
    expected = dict(summary.expected_outcomes)
    got = {k: v for k, v in result["outcomes"].items() if v}
    typer.echo(f"  matches the seeded expectation: {'yes' if got == expected else 'NO'}")
    notices = sorted(outbox.glob("*.eml"))
    typer.echo(f"notices written: {len(notices):,} files in {outbox}/")
    if notices:
        typer.echo(f"  for example: {notices[0]}")
    command = sys.argv[0] if Path(sys.argv[0]).name == "reinstate" else "reinstate"
    typer.echo(f"see every case: REINSTATE_DATABASE_URL=sqlite:///{database} "
               f"{command} cases {seeding.INCIDENT_KEY}")
    if got != expected:
        raise typer.Exit(1)


def _checked_engine() -> Engine:
    """The database engine, after checking both schemas are in place (for operators' commands)."""
    engine = _engine(_settings())
    _require_platform_tables(engine)
    _require_pipeline_schema(engine)
    return engine


cli_operations.register(app, handles_errors, _checked_engine)


def main() -> None:
    prepare_local_prefect()
    app()


if __name__ == "__main__":
    main()
