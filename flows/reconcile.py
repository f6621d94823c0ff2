"""The nightly reconciliation: find what drifted, repair what is safe, report the rest.

Step 1, accounts banned again by a faulty version of the incident that reinstated them:
        a new round of their case.
Step 2, standing bans by versions marked 'faulty' that no incident covers: reported;
        with auto_reinstate, run as an incident of their own under a generated key.
Step 3, incidents left mid-way by a crashed or cancelled run: resumed.
Step 4, notices whose retry time has come, or stuck in 'sending' after a crash: sent.
Step 5, invariants: checked, repaired where safe; anything left fails the run so that
        someone looks.
Step 6, fault detection over the last days (reinstatement/detection.py): suspect rule
        versions published as a table artifact; each new one emits the Prefect event
        `reinstatement.fault.suspected`, for the operators' automations. A suspect
        restores nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.batches import MAX_PARALLEL_TASKS, run_batches
from flows.reinstate_incident import reinstate_incident, resume_incident
from reinstatement import account_lists
from reinstatement.incident_request import build_request
from reinstatement.markdown import md
from reinstatement.resources import resources
from tasks.events import emit_invariants_broken, emit_notices_failed
from tasks.notify import send_notices
from tasks.reconciliation import (
    check_invariants,
    detect_faults,
    failed_notices_by_incident,
    find_incidents_to_resume,
    find_uncovered,
    name_dead_runs,
    reopen_rebanned,
    uncovered_accounts,
)
from tasks.reporting import publish_incidents
from tasks.waits import ended_waits


class InvariantsBroken(RuntimeError):
    """The reconciliation found something it must not repair by itself."""



def _suspect_rows(suspects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": s["version"], "since": s["since"], "until": s["until"],
             "bans": s["bans"], "rate per hour": s["rate"],
             "baseline per hour": s["baseline_rate"], "score (nats)": s["score"],
             "why": "; ".join(s["reasons"]), "preview": s["preview"]} for s in suspects]


def _markdown(findings: dict[str, Any]) -> str:
    lines = [f"# Nightly reconciliation, {md(findings['started_at'])}", ""]
    if findings["dry_run"]:
        lines += ["Dry run: nothing was changed.", ""]
    lines.append("| duty | found | done |")
    lines.append("| --- | ---: | --- |")
    lines.append(f"| accounts banned again by a faulty version | {len(findings['rebanned'])} | "
                 f"{'new rounds opened' if not findings['dry_run'] else 'reported'} |")
    uncovered = sum(v["standing_bans"] for v in findings["uncovered"])
    lines.append(f"| standing bans by faulty versions no incident covers | {uncovered} | "
                 f"{md(', '.join(findings['auto_incidents']) or 'reported')} |")
    lines.append(f"| runs whose process died | {len(findings.get('crashed_runs', []))} | "
                 "named crashed |")
    waits = findings.get("cancelled_waits") or []
    lines.append(f"| runs cancelled while waiting for a decision | {len(waits)} | "
                 f"{md(', '.join(waits)) + ' still await approval' if waits else '-'} |")
    lines.append(f"| incidents left mid-way | {len(findings['resumed'])} | "
                 f"{'resumed' if findings['resumed'] and not findings['dry_run'] else '-'} |")
    lines.append(f"| notices due or stuck | {findings['notices'].get('cases', 0)} | "
                 f"sent {findings['notices'].get('sent', 0)}, retry "
                 f"{findings['notices'].get('retry', 0)}, failed "
                 f"{findings['notices'].get('failed', 0)} |")
    failed = findings.get("failed_notices") or {}
    lines.append(f"| notices failed for good | "
                 f"{sum(sum(r.values()) for r in failed.values())} | "
                 f"{'see below: resend once the mail server takes them' if failed else '-'} |")
    inv = findings["invariants"]
    lines.append(f"| reinstated accounts banned with no cause | "
                 f"{len(inv['banned_without_cause'])} | reported |")
    lines.append(f"| pins still hidden by a reversed ban | {len(inv['pins_left_hidden'])} | "
                 f"repaired {inv['pins_repaired']} |")
    lines.append(f"| notices sent without a reinstatement | "
                 f"{len(inv['notices_without_reinstatement'])} | reported |")
    faults = findings.get("faults")
    if faults is not None:
        lines.append(f"| suspect rule versions (fault detection) | {len(faults['suspects'])} "
                     f"| {len(faults['alerted'])} new alert(s) |")
    if findings["awaiting_operator"]:
        lines += ["", "Waiting for an operator's approval (not resumed): "
                  + ", ".join(md(key) for key in findings["awaiting_operator"])]
    if faults and faults["suspects"]:
        lines += ["", "Suspect rule versions (a suspect restores nothing: preview its draft, "
                  "have the rules team mark the version faulty, approve its plan):", "",
                  "| version | since | until | bans | rate/h | baseline/h | score | why |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for s in faults["suspects"]:
            lines.append(f"| {md(s['version'])} | {md(s['since'])} | {md(s['until'])} | "
                         f"{s['bans']:,} | {s['rate']:.1f} | {s['baseline_rate']:.1f} | "
                         f"{s['score']:.0f} | {md('; '.join(s['reasons']))} |")
    if failed:
        lines += ["", "Notices that failed for good, by reason (`reinstate notices resend "
                  "KEY [--reason R]` queues them again with their Message-IDs):", "",
                  "| incident | reason | notices |", "| --- | --- | ---: |"]
        for key, reasons in failed.items():
            for reason, count in reasons.items():
                lines.append(f"| {md(key)} | {md(reason)} | {count:,} |")
    if findings["uncovered"]:
        lines += ["", "Standing bans by versions marked faulty that no incident covers (an "
                  "incident covers a ban once it has had a real run, its window holds the "
                  "ban's time, and it has a case for the account):", "",
                  "| version | day (UTC) | bans | sample accounts |",
                  "| --- | --- | ---: | --- |"]
        for version in findings["uncovered"]:
            for day in version.get("by_day", []):
                lines.append(f"| {md(version['version'])} | {md(day['day'])} | "
                             f"{day['bans']:,} | {md(day['sample_accounts'])} |")
    return "\n".join(lines)


def newly_failed(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
                 ) -> dict[str, dict[str, int]]:
    """Per incident, the notices that failed for good between the two counts, per reason."""
    grown: dict[str, dict[str, int]] = {}
    for key, reasons in after.items():
        earlier = before.get(key, {})
        more = {reason: count - earlier.get(reason, 0) for reason, count in reasons.items()
                if count > earlier.get(reason, 0)}
        if more:
            grown[key] = more
    return grown


def _reconciliation_run_name() -> str:
    return f"reconciliation {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


@flow(
    name="nightly-reconciliation",
    description="Repair what drifted: re-banned accounts, uncovered faulty bans, runs left "
    "mid-way, unsent notices, broken invariants.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_TASKS),  # type: ignore[arg-type]
    flow_run_name=_reconciliation_run_name,
    validate_parameters=True,
)
def nightly_reconciliation(
    auto_reinstate: bool = False,
    dry_run: bool = False,
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000,
    detect_days: Annotated[int, Field(ge=0, le=90)] = 7,
    detect_until: datetime | None = None,
) -> dict[str, Any]:
    """Find and repair drift; fail when an invariant is broken beyond a safe repair.

    Args:
        auto_reinstate: WARNING: reinstates without an operator's approval. Standing bans by
            rule versions marked 'faulty' that no incident covers are then reinstated at
            once, as an incident of their own. Leave off to have them reported only.
        dry_run: Report what drifted and change nothing: no repair, no resume, no notice.
        batch_size: Cases or notices per batch task, 1 to 50,000.
        detect_days: Look for faulty rule versions over this many days before
            detect_until (0: not at all).
        detect_until: The end of fault detection's window (default: now).
    """
    logger = get_run_logger()
    findings: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                "dry_run": dry_run, "auto_incidents": [], "resumed": []}

    findings["crashed_runs"] = [] if dry_run else name_dead_runs()
    findings["cancelled_waits"] = [] if dry_run else ended_waits()
    findings["rebanned"] = reopen_rebanned(dry_run)

    findings["uncovered"] = find_uncovered()
    if findings["uncovered"] and auto_reinstate and not dry_run:
        versions = [v["version"] for v in findings["uncovered"]]
        ids = uncovered_accounts([v["rule_version_id"] for v in findings["uncovered"]])
        key = "AUTO-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + "-".join(
            v.replace("@", ".") for v in versions)
        key = key[:200]
        staged = account_lists.stage(resources().engine, ids)  # not as a parameter: 5,000,000 ids
        reinstate_incident(build_request(
            incident_key=key, faulty_versions=versions, account_list=str(staged),
            batch_size=batch_size, require_approval=False, notify=True,
            declared_by="nightly-reconciliation"))
        findings["auto_incidents"].append(key)

    incidents = find_incidents_to_resume()
    findings["awaiting_operator"] = incidents["awaiting_operator"]
    findings["resumed"] = incidents["resume"]
    if not dry_run:
        for key in incidents["resume"]:
            logger.info("resuming incident %s", key)
            resume_incident(key, batch_size)

    failed_before = {} if dry_run else failed_notices_by_incident()
    findings["notices"] = {} if dry_run else run_batches(
        send_notices, None, batch_size, "notify", "notify")

    findings["failed_notices"] = failed_notices_by_incident()
    if findings["notices"].get("failed"):
        for key, counts in newly_failed(failed_before, findings["failed_notices"]).items():
            emit_notices_failed(key, counts, total=findings["failed_notices"][key])
    findings["invariants"] = check_invariants(repair=not dry_run)
    findings["faults"] = (None if not detect_days
                          else detect_faults(detect_days, detect_until, dry_run))
    if findings["faults"] is not None:
        create_table_artifact(
            key="fault-suspects", table=_suspect_rows(findings["faults"]["suspects"]) or [
                {"version": "none", "why": f"no suspect in the last {detect_days} days"}],
            description="Fault suspects found by the nightly reconciliation: rule versions "
                        "whose bans look like a fault (a suspect restores nothing)")
    publish_incidents()
    create_markdown_artifact(key="nightly-reconciliation", markdown=_markdown(findings),
                             description="Nightly reconciliation report: what it found and did")
    create_table_artifact(
        key="nightly-reconciliation-findings",
        table=[{"duty": "rebanned", "count": len(findings["rebanned"])},
               {"duty": "uncovered faulty bans",
                "count": sum(v["standing_bans"] for v in findings["uncovered"])},
               {"duty": "incidents resumed", "count": len(findings["resumed"])},
               {"duty": "notices sent", "count": findings["notices"].get("sent", 0)},
               {"duty": "notices failed for good",
                "count": sum(sum(r.values()) for r in findings["failed_notices"].values())},
               {"duty": "pins repaired", "count": findings["invariants"]["pins_repaired"]},
               {"duty": "unrepaired invariant breaks",
                "count": findings["invariants"]["unrepaired"]}],
        description="Nightly reconciliation counts, one per duty (a table)",
    )
    if findings["invariants"]["unrepaired"]:
        emit_invariants_broken(findings["invariants"], dry_run)
        raise InvariantsBroken(
            f"{findings['invariants']['unrepaired']} invariant break(s) need a person: "
            "see the run's artifacts")
    return findings


