"""`reinstate notices resend`: queue an incident's failed notices again and send them.

Registered on the main `reinstate` app by commands/reinstate.py, with its error handling.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer


def register(app: typer.Typer, handles_errors: Callable[[Any], Any],
             check_database: Callable[[], Any],
             parse_moment: Callable[[str | None, str], Any]) -> None:
    notices_app = typer.Typer(help="Notices that failed for good.", no_args_is_help=True)
    app.add_typer(notices_app, name="notices")

    @notices_app.command("resend")
    @handles_errors
    def resend(
        key: str = typer.Argument(..., help="The incident."),
        reason: str | None = typer.Option(
            None, help="Only the notices that failed for this reason: a reply code (550), "
            "a class (5xx, 4xx) or not-sendable."),
        since: str | None = typer.Option(
            None, help="Only the notices that failed at or after this moment (ISO 8601 with "
            "a zone, e.g. 2025-04-20T00:00:00Z)."),
        as_json: bool = typer.Option(False, "--json", help="The outcome as one JSON object."),
    ) -> None:
        """Queue the incident's failed notices again, with the Message-IDs they were given,
        and send them now; exit status 1 if any fails again."""
        from reinstatement import approval, failed_notices
        from reinstatement.incidents import load_incident
        from reinstatement.retrying import in_transaction
        from reinstatement.store.bulk import chunks
        from tasks.notify import send_case_notices

        reason = failed_notices.check_reason(reason)
        moment = parse_moment(since, "--since")
        engine = check_database()

        def queue(conn: Any) -> tuple[int, failed_notices.Requeued]:
            incident = load_incident(conn, key)
            identity = approval.process_identity(conn)
            return incident.id, failed_notices.requeue(
                conn, incident.id, f"{identity.via}:{identity.name}", reason=reason,
                since=moment)

        incident_id, requeued = in_transaction(engine, queue)
        totals = {"sent": 0, "retry": 0, "failed": 0}
        for part in chunks(requeued.case_ids, 1000):
            sent = send_case_notices(incident_id, list(part))
            totals["sent"] += sent.sent
            totals["retry"] += sent.retry
            totals["failed"] += sent.failed
        outcome: dict[str, Any] = {"incident": key, "queued": requeued.notices, **totals}
        if as_json:
            typer.echo(json.dumps(outcome, sort_keys=True))
        elif not requeued.notices:
            typer.echo(f"incident {key}: no failed notices to resend"
                       + (" matching the filter" if reason or moment else ""))
        else:
            typer.echo(f"incident {key}: {requeued.notices} failed notice(s) queued again "
                       f"with their Message-IDs; sent {outcome['sent']}, to retry "
                       f"{outcome['retry']}, failed {outcome['failed']}")
        if outcome["failed"]:
            with engine.connect() as conn:
                still = failed_notices.by_reason(conn, incident_id)
            typer.echo(f"error: incident {key}: {failed_notices.describe(still)}", err=True)
            raise typer.Exit(1)
