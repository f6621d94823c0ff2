"""The operators' commands: `reinstate serve`, `reinstate deploy`, `reinstate reconcile`,
`reinstate review ...`.

Registered on the main `reinstate` app by commands/reinstate.py, with its error handling.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from typing import Any

import typer


def register(app: typer.Typer, handles_errors: Callable[[Any], Any],
             check_database: Callable[[], Any]) -> None:
    """Add the operators' commands to `app`; `check_database` reaches and checks the DB."""
    review_app = typer.Typer(help="Human review of needs_review cases.", no_args_is_help=True)
    app.add_typer(review_app, name="review")

    @app.command()
    @handles_errors
    def serve(
        take_over: bool = typer.Option(
            False, "--take-over", help="Serve the deployments from this process even though "
            "`reinstate deploy` registered them on a work pool (beside the pool's workers, "
            "until the next `reinstate deploy`)."),
    ) -> None:
        """Register the deployments against PREFECT_API_URL and serve their runs."""
        from deployments.serve import main as serve_deployments
        from deployments.serve import stop_on_ctrl_c

        stop_on_ctrl_c()
        check_database()
        serve_deployments(take_over=take_over)

    @app.command()
    @handles_errors
    def deploy(
        pool: str = typer.Option("reinstatement", help="The work pool; created as a process "
                                 "pool when it does not exist."),
        image: str | None = typer.Option(
            None, help="For a Docker or Kubernetes pool: the image flow runs start from."),
        database_batches: int | None = typer.Option(
            None, min=1, max=1000, help="Global limit: verify and restore batches at once "
            "across every worker (default 4 when the limit is first created)."),
        smtp_connections: int | None = typer.Option(
            None, min=1, max=1000, help="Global limit: SMTP connections open at once "
            "(default 2 when first created)."),
        mail_rate: float | None = typer.Option(
            None, min=0.01, max=100_000, help="Global rate limit: notices per second across "
            "every sender, the mail provider's rate (default 200 when first created)."),
    ) -> None:
        """Register the deployments on a work pool, with the global limits, for `prefect
        worker start --pool POOL` processes on any machines."""
        from deployments.pool import register_on_pool
        from tasks.limits import LimitSettings

        done = register_on_pool(pool, image=image, limits=LimitSettings(
            database_batches=database_batches, smtp_connections=smtp_connections,
            mail_rate=mail_rate))
        typer.echo(f"work pool {done.pool} ({done.pool_type}"
                   f"{', created' if done.pool_created else ''})")
        for name, limit in done.limits.items():
            if limit.slot_decay_per_second:
                typer.echo(f"  limit {name}: {limit.slot_decay_per_second:g} per second "
                           f"(burst {limit.limit})")
            else:
                typer.echo(f"  limit {name}: {limit.limit} at once")
        typer.echo(f"deployments: {', '.join(done.deployments)}")
        typer.echo(done.alerts.describe())
        typer.echo(f"start workers with: prefect worker start --pool {done.pool}")

    @app.command()
    @handles_errors
    def reconcile(
        dry_run: bool = typer.Option(False, "--dry-run", help="Report only; change nothing."),
        auto_reinstate: bool = typer.Option(
            False, "--auto-reinstate",
            help="Run uncovered bans by faulty versions as an incident of their own."),
        batch_size: int = typer.Option(5000, min=1, max=50_000, help="Cases per batch."),
        as_json: bool = typer.Option(False, "--json", help="The findings as one JSON object."),
    ) -> None:
        """Run the nightly reconciliation now."""
        check_database()
        from flows.reconcile import nightly_reconciliation

        findings = nightly_reconciliation(auto_reinstate=auto_reinstate, dry_run=dry_run,
                                          batch_size=batch_size)
        if as_json:
            typer.echo(json.dumps(findings, sort_keys=True, default=str))
            return
        inv = findings["invariants"]
        typer.echo(f"accounts banned again by a faulty version: {len(findings['rebanned'])}")
        typer.echo("uncovered standing bans by faulty versions: " + (", ".join(
            f"{v['version']} {v['standing_bans']:,}" for v in findings["uncovered"]) or "none"))
        if findings["auto_incidents"]:
            typer.echo(f"run as incidents: {', '.join(findings['auto_incidents'])}")
        typer.echo(f"incidents resumed: {', '.join(findings['resumed']) or 'none'}")
        if findings["awaiting_operator"]:
            typer.echo("waiting for an operator: " + ", ".join(findings["awaiting_operator"]))
        notices = findings["notices"]
        typer.echo(f"notices sent: {notices.get('sent', 0)}, to retry: "
                   f"{notices.get('retry', 0)}, failed: {notices.get('failed', 0)}")
        typer.echo(f"pins repaired: {inv['pins_repaired']}; unrepaired invariant breaks: "
                   f"{inv['unrepaired']}")

    @app.command()
    @handles_errors
    def approve(
        key: str = typer.Argument(..., help="The incident key."),
        plan: str | None = typer.Option(
            None, help="The digest of the plan you approve (8 digits or more, from "
            "`reinstate plan KEY`); default: the newest plan, shown before it is approved."),
        operator: str | None = typer.Option(
            None, help="A display name for the report; who you are comes from your "
            "database role or your login name."),
        note: str = typer.Option("", help="Why you approve."),
    ) -> None:
        """Approve the plan of an incident awaiting approval; the next run of its key
        restores exactly that plan. Whoever declared the incident may not approve it."""
        _decide(key, "approve", plan, operator, note)

    @app.command()
    @handles_errors
    def reject(
        key: str = typer.Argument(..., help="The incident key."),
        note: str = typer.Option(..., help="Why you reject (required)."),
        plan: str | None = typer.Option(None, help="The digest of the plan you reject."),
        operator: str | None = typer.Option(None, help="A display name for the report."),
    ) -> None:
        """Reject an incident awaiting approval: nothing is ever restored under its key."""
        _decide(key, "reject", plan, operator, note)

    def _decide(key: str, decision: str, plan: str | None, operator: str | None,
                note: str) -> None:
        from reinstatement import approval, runner
        from reinstatement.incidents import load_incident
        from reinstatement.lifecycle import current_state
        from reinstatement.plan_records import verdict_counts
        from reinstatement.plans import describe_counts
        from reinstatement.wording import sentence

        engine = check_database()
        with engine.connect() as conn:
            incident = load_incident(conn, key)
            identity = approval.process_identity(conn)
            newest = current_state(conn, incident.id).plan
            if newest is not None:
                typer.echo(f"incident {key}: newest plan {newest.short} ({newest.digest}): "
                           f"{describe_counts(verdict_counts(conn, newest.id))}")
        from tasks.events import announcing_transitions

        with announcing_transitions(actor=approval.operator_actor(identity),
                                    incident_id=incident.id):
            state, decided = runner.decide(
                engine, incident, "approve" if decision == "approve" else "reject",
                identity, plan_digest=plan, operator=operator, note=note)
        if decision == "approve":
            typer.echo(f"incident {key}: plan {decided.short} approved by "
                       f"{identity.describe()}. Restore it by running `reinstate run {key}` "
                       "(or Resume its run in the Prefect UI).")
        else:
            typer.echo(f"incident {key}: {sentence(state.describe())} Nothing will be "
                       "restored under this key.")

    @review_app.command("list")
    @handles_errors
    def review_list(
        key: str | None = typer.Argument(None, help="Only this incident."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
        as_csv: bool = typer.Option(
            False, "--csv", help="CSV with a header row (case_id, incident, account_id, "
            "round, reason), for a spreadsheet: `reinstate review list KEY --csv > "
            "review.csv`."),
    ) -> None:
        """Every case waiting for a reviewer, oldest first, with why each is uncertain
        (the whole reason; the Prefect UI shows the same list in pages)."""
        from reinstatement.errors import BadInput
        from reinstatement.review import cases_awaiting_review

        if as_json and as_csv:
            raise BadInput("give at most one of --json or --csv")
        engine = check_database()
        with engine.connect() as conn:
            if key is not None:
                from reinstatement.incidents import load_incident

                load_incident(conn, key)  # an unknown key is bad input, not an empty list
            out = csv.writer(sys.stdout, lineterminator="\n") if as_csv else None
            if out is not None:
                out.writerow(["case_id", "incident", "account_id", "round", "reason"])
            for case in cases_awaiting_review(conn, key):
                if out is not None:
                    out.writerow([case["case_id"], case["incident"], case["account_id"],
                                  case["round"], case["why"]])
                elif as_json:
                    typer.echo(json.dumps(case, sort_keys=True, ensure_ascii=False))
                else:
                    typer.echo(f"{case['case_id']:>8} {case['incident']} account "
                               f"{case['account_id']}: {case['why']}")

    @review_app.command("decide")
    @handles_errors
    def review_decide(
        case_id: int = typer.Argument(..., min=1, help="The case, from `review list`."),
        reinstate: bool = typer.Option(False, "--reinstate", help="Lift the ban and notify."),
        uphold: bool = typer.Option(False, "--uphold", help="Keep the ban."),
        reviewer: str = typer.Option(..., help="Your name or handle."),
        note: str = typer.Option(..., help="Why, for the audit trail."),
    ) -> None:
        """Decide one case: reinstate (restore and notify now) or uphold."""
        from reinstatement.errors import BadInput
        from reinstatement.review import apply_review

        if reinstate == uphold:
            raise BadInput("give exactly one of --reinstate or --uphold")
        check_database()
        from reinstatement.review import reviewer_actor
        from tasks.events import announcing_transitions
        from tasks.notify import send_case_notices

        with announcing_transitions(actor=reviewer_actor(reviewer)):
            result = apply_review(case_id, "reinstate" if reinstate else "uphold", reviewer,
                                  note, send_notices=send_case_notices)
        typer.echo(f"case {case_id} of {result['incident']}: {result['outcome']} "
                   f"({result['state']})")
        if "notice" in result:
            typer.echo(f"  notice: sent {result['notice']['sent']}, retry "
                       f"{result['notice']['retry']}, failed {result['notice']['failed']}")
