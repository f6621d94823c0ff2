"""Tasks that show operators what a run found and did, as Prefect artifacts."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import (
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from reinstatement.incident_states import AWAITING_APPROVAL_WORDS
from reinstatement.markdown import md
from reinstatement.models import Case, Incident
from reinstatement.reports import OUTCOME_MEANINGS, OUTCOMES, incident_report, would_restore
from reinstatement.resources import resources
from reinstatement.wording import sentence
from tasks.artifacts import artifact_key, publish_once_per_run
from tasks.review_list import publish_review_queue

SAMPLES_PER_OUTCOME = 5
def _samples(incident_key: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with resources().engine.connect() as conn:
        incident_id = conn.execute(select(Incident.id).where(Incident.key == incident_key)
                                   ).scalar_one()
        for outcome in OUTCOMES:
            for case in conn.execute(
                select(Case).where(Case.incident_id == incident_id, Case.outcome == outcome)
                .order_by(Case.id).limit(SAMPLES_PER_OUTCOME)
            ):
                rows.append({
                    "case": case.id,
                    "account": case.account_id,
                    "outcome": case.outcome,
                    "why": (case.reasons or {}).get("summary", ""),
                })
    return rows


def _samples_markdown(incident_key: str, plan: str, rows: list[dict[str, Any]]) -> str:
    """The sample cases as a markdown table: the UI wraps a long reason in a markdown
    table, where a table artifact's cell cuts it off."""
    lines = [f"# Sample cases of plan {md(plan)}: {md(incident_key)}", "",
             f"Up to {SAMPLES_PER_OUTCOME} cases per outcome, the lowest case ids first, "
             "with why each came out so.", "",
             "| case id | account | outcome | why |", "| ---: | ---: | --- | --- |"]
    lines += [f"| {int(row['case'])} | {int(row['account'])} | {md(row['outcome'])} | "
              f"{md(row['why'], limit=None)} |" for row in rows]
    if not rows:
        lines.append("| - | - | - | no case yet |")
    return "\n".join(lines)


def _report(incident_key: str) -> dict[str, Any]:
    with resources().engine.connect() as conn:
        return incident_report(conn, incident_key)


def _decision_lines(report: dict[str, Any]) -> list[str]:
    """What was declared, planned and decided, first thing on the page: a rejection cannot
    be missed, and the plan an operator approves is named by its digest."""
    decision = report.get("decision")
    if report["status"] == "rejected" and decision:
        return [f"## REJECTED by {md(decision['by'])} at {md(decision['at'])}", "",
                f"Note: {md(decision['note'])}", "",
                "Nothing was restored and nothing will be under this incident key.", ""]
    lines = []
    if report.get("declared_by"):
        lines += [f"Declared by {md(report['declared_by'])}.", ""]
    plan = report.get("plan")
    if plan:
        counts = ", ".join(f"{md(v)} {n:,}" for v, n in plan["counts"].items())
        lines += [f"**Plan {md(plan['short'])}** ({md(plan['state'])}): "
                  f"{plan['cases']:,} cases ({counts}). Digest: `{md(plan['digest'])}`.", ""]
    if decision and decision["decision"] == "approve":
        said = f": {md(sentence(decision['note']))}" if decision["note"] else "."
        lines += [f"Plan {md(decision['plan'] or '-')} approved by {md(decision['by'])} at "
                  f"{md(decision['at'])}{said}", ""]
    if report["status"] == "awaiting_approval":
        # The heading says "Awaiting approval"; the words go on from there.
        words = report["status_words"].removeprefix(AWAITING_APPROVAL_WORDS)
        lines += [f"**Awaiting approval**{md(sentence(words))}", ""]
    return lines


def _markdown(report: dict[str, Any], title: str, counts: dict[str, int]) -> str:
    if report["status"] == "rejected":
        title = f"REJECTED: {title}"
    lines = [f"# {title}: {md(report['incident'])}", "", *_decision_lines(report)]
    lines.append("| faulty version | corrected by |")
    lines.append("| --- | --- |")
    for version in report["faulty_versions"]:
        corrected = md(version["corrected"]) if version["corrected"] else "(none: uncertain)"
        lines.append(f"| {md(version['faulty'])} | {corrected} |")
    window = report["window"]
    lines += ["", f"Window on ban creation: {md(window['since'] or 'open')} to "
              f"{md(window['until'] or 'open')} (end excluded).", ""]
    if report["status"] == "rejected":
        lines.append("| outcome as judged (would have been; rejected, so nothing was "
                     "restored) | accounts |")
    else:
        lines.append("| outcome | accounts |")
    lines.append("| --- | ---: |")
    for outcome in OUTCOMES:
        lines.append(f"| {outcome} | {counts.get(outcome, 0):,} |")
    lines.append(f"| **total** | **{sum(counts.values()):,}** |")
    if report["notices"]:
        lines += ["", "| notice state | notices |", "| --- | ---: |"]
        lines += [f"| {md(state)} | {n:,} |" for state, n in sorted(report["notices"].items())]
    if title.startswith(("Dry run", "Preview")):
        would = report.get("would_restore") or {}
        lines += ["", "Nothing on the platform has changed yet. Restoring this plan would:", "",
                  f"- send {would.get('notices', 0):,} notices (the reinstated accounts with "
                  "an address, when the incident notifies);",
                  f"- bring back {would.get('pins', 0):,} pins (hidden by the bans it "
                  "reverses).", "", "What each outcome means:", ""]
        lines += [f"- **{outcome}**: {OUTCOME_MEANINGS[outcome]}." for outcome in OUTCOMES]
    else:
        lines += ["", f"Pins restored: {report['pins_restored']:,}."]
    if report.get("runs"):
        lines += ["", "| run | started | finished | status |", "| --- | --- | --- | --- |"]
        for number, run in enumerate(report["runs"], start=1):
            kind = "dry run" if run["dry_run"] else "run"
            lines.append(f"| {kind} {number} | {md(run['started_at'])} | "
                         f"{md(run['finished_at'] or '-')} | {md(run['status'])} |")
        if any(run["status"] == "crashed" for run in report["runs"]):
            lines += ["", "A crashed run's process died; the finished time is when a later "
                      "run found it."]
        lines += _where_lines(report["runs"])
    return "\n".join(lines)


def _where_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Where each run's batches ran: per worker process and step, batches and cases."""
    lines: list[str] = []
    for number, run in enumerate(runs, start=1):
        if not run.get("workers"):
            continue
        if not lines:
            lines += ["", "Where the batches ran:", "",
                      "| run | worker | host | process | step | batches | cases |",
                      "| --- | --- | --- | ---: | --- | ---: | ---: |"]
        for place in run["workers"]:
            lines.append(f"| {number} | {md(place['worker'] or '(this run)')} | "
                         f"{md(place['host'])} | {place['pid']} | {md(place['step'])} | "
                         f"{place['batches']:,} | {place['cases']:,} |")
        children = run.get("child_runs") or {}
        if children:
            lines += ["", f"Run {number}'s child runs: " + ", ".join(
                f"{md(what)} {count}" for what, count in children.items()) + "."]
    return lines


def _plan_short(report: dict[str, Any]) -> str:
    plan = report.get("plan")
    return str(plan["short"]) if plan else "none"


def preview_key(incident_key: str, plan: str) -> str:
    """The key of the preview of one plan (its short digest) of the incident: a run that
    waits again for a newer plan shows each plan's preview under its own name."""
    return artifact_key(incident_key, f"preview-plan-{plan}")


def samples_key(incident_key: str, plan: str) -> str:
    """The key of the sample cases that go with the preview of `plan`."""
    return artifact_key(incident_key, f"samples-plan-{plan}")


@task(name="publish-preview", cache_policy=NO_CACHE)
def publish_preview(incident_key: str, dry_run: bool) -> dict[str, int]:
    """Publish the verified outcomes of the incident's newest plan (counts, rule versions,
    sample cases) before any change: one card each per run and plan, brought up to date
    when the run publishes them again (after the operator's decision, say)."""
    report = _report(incident_key)
    counts = report["preview_outcomes"] if dry_run else report["outcomes"]
    plan = _plan_short(report)
    with resources().engine.connect() as conn:
        incident_id = conn.execute(select(Incident.id).where(Incident.key == incident_key)
                                   ).scalar_one()
        report["would_restore"] = would_restore(conn, incident_id, previewed=dry_run)
    title = "Dry run preview" if dry_run else "Preview before restore"
    what = "Dry-run preview" if dry_run else "Preview, before anything is restored,"
    publish_once_per_run(
        preview_key(incident_key, plan), markdown=_markdown(report, title, counts),
        description=f"{what} of plan {plan} of incident {md(incident_key)}: its counts per "
        "outcome, the rule versions, and what restoring it would do")
    publish_once_per_run(
        samples_key(incident_key, plan),
        markdown=_samples_markdown(incident_key, plan, _samples(incident_key)),
        description=f"Sample cases of plan {plan} of incident {md(incident_key)}: up to "
        f"{SAMPLES_PER_OUTCOME} per outcome, each with why (they go with its preview)")
    return dict(counts)


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(incident_key: str) -> dict[str, Any]:
    """Publish the incident's report (markdown), its counts and audit trail (tables), and
    its review list; republished whenever they change, each under one key per incident,
    so the key's newest version is the incident as it is now."""
    report = _report(incident_key)
    publish_review_queue(incident_key)
    key = artifact_key(incident_key, "report")
    publish_once_per_run(
        key, markdown=_markdown(report, "Reinstatement report", report["outcomes"]),
        description=f"Report of incident {md(incident_key)}: its status, plan and decision, "
        f"counts per outcome, notices and runs, as of this run (the newest version, "
        f"Artifacts, {key}, is the incident now)",
    )
    publish_once_per_run(
        artifact_key(incident_key, "outcomes"),
        table=[{"outcome": o, "accounts": report["outcomes"].get(o, 0)} for o in OUTCOMES]
        + [{"outcome": f"notice {s}", "accounts": n} for s, n in report["notices"].items()],
        description=f"Report counts of incident {md(incident_key)}: accounts per outcome "
        "and notices per state, as a table",
    )
    publish_once_per_run(
        artifact_key(incident_key, "audit"),
        markdown=audit_markdown(incident_key, _audit_rows(incident_key)),
        description=f"Audit trail of incident {md(incident_key)}: each transition of the "
        "incident, who made it and why, whole (`reinstate audit KEY --cases` adds every "
        "case's)",
    )
    return report


def _audit_rows(incident_key: str) -> list[dict[str, Any]]:
    from reinstatement.audit import trail
    from reinstatement.incidents import load_incident

    with resources().engine.connect() as conn:
        incident = load_incident(conn, incident_key)
        return list(trail(conn, incident.id))


def audit_markdown(incident_key: str, rows: list[dict[str, Any]]) -> str:
    """The incident's audit trail as the UI shows it: a markdown table, so that each
    reason (an operator's note, a decision's why) is shown whole and wrapped, where a table
    artifact's cell cuts it to one line."""
    lines = [f"# Audit trail: {md(incident_key)}", ""]
    if not rows:
        return "\n".join([*lines, "No transition of this incident yet."])
    lines += [f"{len(rows):,} transitions of the incident, oldest first; "
              "`reinstate audit KEY --cases` adds every case's.", "",
              "| at | from | to | who | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {md(row['at'])} | {md(row['from'] or '-')} | {md(row['to'])} | "
              f"{md(row['actor'] or '-')} | {md(row['reason'] or '-', limit=None)} |"
              for row in rows]
    return "\n".join(lines)


@task(name="publish-incidents", cache_policy=NO_CACHE)
def publish_incidents() -> list[dict[str, Any]]:
    """Every incident with its status, plan, declarer, decider, counts and last run, as a
    table artifact (what `reinstate incidents` prints)."""
    from reinstatement.reports import incident_rows

    with resources().engine.connect() as conn:
        rows = incident_rows(conn)
    create_table_artifact(
        key="incidents", table=rows or [{"incident": "none yet"}],
        description="All incidents, newest first, each with its status, plan, who declared "
        "and who decided, counts and last run")
    return rows
