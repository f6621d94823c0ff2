"""The nightly reconciliation's steps, each a task the UI shows: reopen accounts banned
again, find uncovered faulty bans, find incidents to resume, name dead runs, check the
invariants, detect faults. The flow that runs them in order is flows/reconcile.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from reinstatement import detection, reconcile, runs
from reinstatement.resources import resources
from reinstatement.retrying import in_transaction
from tasks.events import announcing_transitions, emit_fault_suspected
from tasks.pipeline import run_actor


@task(name="reopen-rebanned-accounts", cache_policy=NO_CACHE)
def reopen_rebanned(dry_run: bool) -> list[dict[str, Any]]:
    """Find reinstated accounts banned again by their incident's faulty versions."""
    def work(conn: Any) -> list[dict[str, Any]]:
        found = []
        for reban in reconcile.rebanned_accounts(conn):
            new_case = None if dry_run else reconcile.open_next_round(conn, reban, run_actor())
            found.append({"incident": reban.incident, "case": reban.case_id,
                          "account": reban.account_id, "bans": reban.ban_ids,
                          "new_case": new_case})
        return found

    with announcing_transitions(actor=run_actor()):
        return in_transaction(resources().engine, work)


@task(name="find-uncovered-faulty-bans", cache_policy=NO_CACHE)
def find_uncovered() -> list[dict[str, Any]]:
    """Standing bans by versions marked 'faulty' that no incident covers."""
    with resources().engine.connect() as conn:
        return [vars(v) for v in reconcile.uncovered_faulty_bans(conn)]


@task(name="uncovered-accounts", cache_policy=NO_CACHE)
def uncovered_accounts(rule_version_ids: list[int]) -> list[int]:
    """Every account with an uncovered standing ban by these versions."""
    with resources().engine.connect() as conn:
        return reconcile.uncovered_account_ids(conn, rule_version_ids)


@task(name="find-incidents-to-resume", cache_policy=NO_CACHE)
def find_incidents_to_resume() -> dict[str, list[str]]:
    with resources().engine.connect() as conn:
        return {"resume": reconcile.incidents_to_resume(conn),
                "awaiting_operator": reconcile.incidents_awaiting_operator(conn)}


@task(name="name-dead-runs", cache_policy=NO_CACHE)
def name_dead_runs() -> list[int]:
    """Mark 'crashed' the run rows left 'running' by runs whose process is gone."""
    return runs.name_dead_runs(resources().engine)


@task(name="check-invariants", cache_policy=NO_CACHE)
def check_invariants(repair: bool) -> dict[str, Any]:
    """Check the pipeline's invariants and repair what is safe to repair."""
    report = in_transaction(resources().engine, lambda conn: reconcile.check_invariants(
        conn, repair=repair))
    return {**vars(report), "unrepaired": report.unrepaired}


@task(name="detect-faults", cache_policy=NO_CACHE)
def detect_faults(days: int, until: datetime | None, dry_run: bool) -> dict[str, Any]:
    """Suspect rule versions of the last `days`; each not yet alerted emits an event."""
    now = datetime.now(UTC)
    end = until or now
    suspects = detection.detect(resources().engine, end - timedelta(days=days), end)
    found = [s.as_json() for s in suspects]
    if dry_run:
        return {"suspects": found, "alerted": []}
    pending = detection.record(resources().engine, suspects, now)
    alerted = []
    for suspect in pending:
        if emit_fault_suspected(suspect):
            alerted.append(suspect["version"])
    detection.mark_alerted(resources().engine, alerted, now)
    if len(alerted) < len(pending):
        get_run_logger().warning("%d suspect alert(s) could not be emitted; the next run "
                                 "tries again", len(pending) - len(alerted))
    return {"suspects": found, "alerted": alerted}


@task(name="count-failed-notices", cache_policy=NO_CACHE)
def failed_notices_by_incident() -> dict[str, dict[str, int]]:
    """Per incident, its notices that failed for good, per reason."""
    from reinstatement.failed_notices import by_incident

    with resources().engine.connect() as conn:
        return by_incident(conn)
