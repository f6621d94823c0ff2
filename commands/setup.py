"""Commands that set up a database and try the pipeline on it: `db create-platform`,
`db upgrade`, `seed` (a synthetic platform, or a history for fault detection) and
`demo` (the whole job on the embedded database, with a summary)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from commands.common import (
    app,
    db_app,
    engine_for,
    handles_errors,
    print_report,
    process_settings,
    require_platform_tables,
    run_flow,
)
from reinstatement.errors import BadInput


@db_app.command("create-platform")
@handles_errors
def db_create_platform() -> None:
    """Create the platform's four tables, for local runs and tests (idempotent)."""
    from reinstatement.store.schema import create_platform

    created = create_platform(engine_for(process_settings(), create=True))
    typer.echo(f"created: {', '.join(created)}" if created else "platform tables already exist")


@db_app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the pipeline's own migrations (idempotent; never touches platform tables)."""
    from reinstatement.store.schema import upgrade_pipeline

    before, after = upgrade_pipeline(engine_for(process_settings(), create=True))
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
    settings = process_settings()
    engine = engine_for(settings)
    require_platform_tables(engine)
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
    engine = engine_for(process_settings())
    require_platform_tables(engine)
    try:
        summary = seed_history(engine, options)
    except PlatformNotEmptyError as exc:
        raise BadInput(str(exc)) from None
    for line in history_description(summary, options):
        typer.echo(line)



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
    settings = process_settings()
    engine = engine_for(settings, create=True)
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
    result = run_flow(engine, request)
    typer.echo("")
    print_report(result)
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


