"""`reinstate incidents` and `reinstate audit KEY`: the list of incidents and an
incident's audit trail, as an operator reads them.

Registered on the main `reinstate` app by commands/reinstate.py, with its error handling.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer


def register(app: typer.Typer, handles_errors: Callable[[Any], Any],
             check_database: Callable[[], Any]) -> None:

    @app.command()
    @handles_errors
    def incidents(
        status: str | None = typer.Option(
            None, help="Only incidents in this status: registered, previewed, "
            "awaiting_approval, approved, rejected, running, completed."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """Every incident, newest first: status, plan, declarer, decider, counts, last run."""
        from reinstatement.errors import BadInput
        from reinstatement.incident_states import IncidentStatus
        from reinstatement.reports import incident_rows

        if status is not None and status not in {s.value for s in IncidentStatus}:
            raise BadInput(f"--status: {status!r} is not one of "
                           f"{', '.join(s.value for s in IncidentStatus)}")
        engine = check_database()
        from commands.common import record_ended_waits

        record_ended_waits()
        with engine.connect() as conn:
            rows = incident_rows(conn, status)
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row, sort_keys=True, ensure_ascii=False))
            return
        if not rows:
            typer.echo("no incidents" + (f" in status {status}" if status else ""))
        for row in rows:
            typer.echo(f"{row['incident']}: {row['status_words']}")
            typer.echo(f"  plan {row['plan'] or '-'}; declared by {row['declared_by'] or '-'}; "
                       f"decided by {row['decided_by'] or '-'}"
                       + (f" ({row['decision']})" if row["decision"] else ""))
            typer.echo(f"  cases {row['cases']:,}, reinstated {row['reinstated']:,}, needs "
                       f"review {row['needs_review']:,}; notices sent "
                       f"{row['notices_sent']:,}, failed {row['notices_failed']:,}")
            if row["last_run"]:
                typer.echo(f"  last run: {row['last_run']}, started "
                           f"{row['last_run_started']}, finished "
                           f"{row['last_run_finished'] or '-'}")

    @app.command()
    @handles_errors
    def audit(
        key: str = typer.Argument(..., help="The incident."),
        cases: bool = typer.Option(False, "--cases", help="Every case's transitions too."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """The incident's audit trail, oldest first: each transition, who made it and why."""
        from reinstatement.audit import trail
        from reinstatement.incidents import load_incident

        engine = check_database()
        with engine.connect() as conn:
            incident = load_incident(conn, key)
            for entry in trail(conn, incident.id, cases=cases):
                if as_json:
                    typer.echo(json.dumps(entry, sort_keys=True, ensure_ascii=False))
                else:
                    case = f" case {entry['case_id']}" if entry["case_id"] else ""
                    typer.echo(f"{entry['at']}{case}: {entry['from'] or '-'} -> "
                               f"{entry['to']} by {entry['actor']}: {entry['reason']}")
