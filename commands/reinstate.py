"""`reinstate`: the command line of the reinstatement pipeline.

The incident's commands are here (detect, run, report, plan, cases); setting up and
trying a database is `setup.py`, serving and deploying `operations.py`, and what every
command shares (errors, settings, the engine) `common.py`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from commands import notices as notice_commands
from commands import operations as cli_operations
from commands import records as record_commands
from commands import setup  # noqa: F401 - its commands register on the app
from commands.common import (
    app,
    checked_engine,
    engine_for,
    handles_errors,
    parse_moment,
    print_report,
    process_settings,
    record_ended_waits,
    require_pipeline_schema,
    require_platform_tables,
    run_flow,
)
from commands.local_prefect import (
    prepare_local_prefect,
)
from reinstatement.errors import BadInput


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

    end = parse_moment(until, "--until") or datetime.now(UTC)
    start = parse_moment(since, "--since") or end - timedelta(days=30)
    if start >= end:
        raise BadInput(f"--since ({start.isoformat()}) must be before --until "
                       f"({end.isoformat()})")
    if end - start > timedelta(days=400):
        raise BadInput("--since and --until: at most 400 days at a time")
    engine = engine_for(process_settings())
    require_platform_tables(engine)
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

    settings = process_settings()
    engine = engine_for(settings)
    require_pipeline_schema(engine)
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
                since=parse_moment(since, "--since"),
                until=parse_moment(until, "--until"),
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
    report = run_flow(engine, request)
    print_report(report)


@app.command()
@handles_errors
def report(
    key: str = typer.Argument(..., help="The incident key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Counts per outcome and per notice state, and the runs' timings."""
    from reinstatement.reports import incident_report

    engine = engine_for(process_settings())
    require_pipeline_schema(engine)
    record_ended_waits()
    with engine.connect() as conn:
        result = incident_report(conn, key)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    print_report(result)
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

    engine = engine_for(process_settings())
    require_pipeline_schema(engine)
    with engine.connect() as conn:
        result = plan_report(conn, key)
        if as_json:
            typer.echo(json.dumps(result, sort_keys=True))
        else:
            _print_plan(result)
        if cases and result["plan"] is not None:
            from reinstatement.plan_records import plan_entries

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
    engine = engine_for(process_settings())
    require_pipeline_schema(engine)
    with engine.connect() as conn:
        for case in iter_cases(conn, key, outcome):
            if as_json:
                typer.echo(json.dumps(case, sort_keys=True, ensure_ascii=False))
            else:
                summary = (case["reasons"] or {}).get("summary", "")
                typer.echo(f"{case['case_id']:>8} {case['account_id']:>10} "
                           f"{case['outcome'] or '-':<15} {case['state']:<10} {summary}")



cli_operations.register(app, handles_errors, checked_engine)
notice_commands.register(app, handles_errors, checked_engine, parse_moment)
record_commands.register(app, handles_errors, checked_engine)


def main() -> None:
    prepare_local_prefect()
    app()


if __name__ == "__main__":
    main()
