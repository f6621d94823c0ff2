"""Tasks that show operators what a run found and did, as Prefect artifacts."""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select

from reinstatement.markdown import cell, md
from reinstatement.models import Case, Incident
from reinstatement.reports import OUTCOME_MEANINGS, OUTCOMES, incident_report, would_restore
from reinstatement.resources import resources
from reinstatement.review import cases_awaiting_review
from reinstatement.states import CaseState

SAMPLES_PER_OUTCOME = 5


def _artifact_key(incident_key: str, what: str) -> str:
    """The artifact key of one incident's `what`: distinct for distinct incident keys.

    Artifact keys allow lowercase letters, digits and dashes only, so `INC-1`, `inc-1` and
    `INC.1` would all read `inc-1`: a digest of the exact key keeps them apart.
    """
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-"
                      for c in incident_key.lower()).strip("-")
    digest = hashlib.sha256(incident_key.encode()).hexdigest()[:10]
    return f"{what}-{cleaned[:60]}-{digest}"


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
                    "why": cell((case.reasons or {}).get("summary", "")),
                })
    return rows


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
        note = f": {md(decision['note'])}" if decision["note"] else ""
        lines += [f"Plan {md(decision['plan'] or '-')} approved by {md(decision['by'])} at "
                  f"{md(decision['at'])}{note}.", ""]
    if report["status"] == "awaiting_approval":
        words = report["status_words"].removeprefix("awaiting approval")
        lines += [f"**Awaiting approval**{md(words)}", ""]
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


@task(name="publish-preview", cache_policy=NO_CACHE)
def publish_preview(incident_key: str, dry_run: bool) -> dict[str, int]:
    """Publish the verified outcomes (counts, rule versions, samples) before any change."""
    report = _report(incident_key)
    counts = report["preview_outcomes"] if dry_run else report["outcomes"]
    with resources().engine.connect() as conn:
        incident_id = conn.execute(select(Incident.id).where(Incident.key == incident_key)
                                   ).scalar_one()
        report["would_restore"] = would_restore(conn, incident_id, previewed=dry_run)
    title = "Dry run preview" if dry_run else "Preview before restore"
    create_markdown_artifact(
        key=_artifact_key(incident_key, "preview"),
        markdown=_markdown(report, title, counts),
        description=f"{title} of incident {incident_key}",
    )
    create_table_artifact(
        key=_artifact_key(incident_key, "preview-samples"),
        table=_samples(incident_key),
        description=f"Up to {SAMPLES_PER_OUTCOME} sample cases per outcome",
    )
    return dict(counts)


REVIEW_ROWS = 500  # cases listed in the review table; the CLI lists every one


def review_queue_rows(incident_key: str, limit: int = REVIEW_ROWS) -> tuple[list[dict[str, Any]],
                                                                          int]:
    """The cases of the incident waiting for review (oldest first, up to `limit`), and how
    many wait in all."""
    with resources().engine.connect() as conn:
        waiting = conn.execute(
            select(func.count()).select_from(Case).join(Incident, Incident.id == Case.incident_id)
            .where(Incident.key == incident_key, Case.state == CaseState.REVIEW)
        ).scalar_one()
        rows = [{"case id": case["case_id"], "account": case["account_id"],
                 "reason": cell(case["why"]), "incident": cell(case["incident"])}
                for case in islice(cases_awaiting_review(conn, incident_key, page=limit),
                                   limit)]
    return rows, waiting


def publish_review_queue(incident_key: str) -> int:
    """The table of cases waiting for review, under one key per incident: each call
    publishes its current state (after a run, after each review decision)."""
    rows, waiting = review_queue_rows(incident_key)
    shown = (f"all {waiting}" if waiting <= len(rows)
             else f"the oldest {len(rows)} of {waiting}; `reinstate review list` lists all")
    create_table_artifact(
        key=_artifact_key(incident_key, "review"),
        table=rows or [{"case id": "", "account": "", "reason": "no case waits for review",
                        "incident": cell(incident_key)}],
        description=(f"Cases of {md(incident_key)} waiting for review: {shown}. Decide one "
                     "with the review-case deployment (Deployments, review-case, Run, "
                     "Custom run, and the case id from this table)."),
    )
    return waiting


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(incident_key: str) -> dict[str, Any]:
    """Publish the incident's counts as markdown and table artifacts, and the cases
    waiting for review; republished whenever they change."""
    report = _report(incident_key)
    publish_review_queue(incident_key)
    create_markdown_artifact(
        key=_artifact_key(incident_key, "report"),
        markdown=_markdown(report, "Reinstatement report", report["outcomes"]),
        description=f"Outcome of incident {incident_key}",
    )
    create_table_artifact(
        key=_artifact_key(incident_key, "outcomes"),
        table=[{"outcome": o, "accounts": report["outcomes"].get(o, 0)} for o in OUTCOMES]
        + [{"outcome": f"notice {s}", "accounts": n} for s, n in report["notices"].items()],
        description=f"Counts per outcome and notice state for {incident_key}",
    )
    create_table_artifact(
        key=_artifact_key(incident_key, "audit"),
        table=_audit_rows(incident_key) or [{"at": "-", "to": "no transition yet"}],
        description=f"The audit trail of incident {incident_key}: each transition of the "
        "incident, who made it and why (`reinstate audit KEY --cases` adds every case's)",
    )
    return report


def _audit_rows(incident_key: str) -> list[dict[str, Any]]:
    from reinstatement.audit import trail
    from reinstatement.incidents import load_incident

    with resources().engine.connect() as conn:
        incident = load_incident(conn, incident_key)
        return list(trail(conn, incident.id))


@task(name="publish-incidents", cache_policy=NO_CACHE)
def publish_incidents() -> list[dict[str, Any]]:
    """Every incident with its status, plan, declarer, decider, counts and last run, as a
    table artifact (what `reinstate incidents` prints)."""
    from reinstatement.reports import incident_rows

    with resources().engine.connect() as conn:
        rows = incident_rows(conn)
    create_table_artifact(
        key="incidents", table=rows or [{"incident": "none yet"}],
        description="Every incident, newest first: status, plan, who declared and who "
        "decided, counts and the last run")
    return rows


class Progress:
    """A progress artifact for one step, updated after each round of batches."""

    def __init__(self, incident_key: str, step: str, total: int) -> None:
        self.step = step
        self.count = total
        self.total = max(total, 1)
        self.done = 0
        self.artifact_id: UUID | None = None
        # A step with nothing left to do (a rerun after the resume, say) is done, not 0%.
        artifact = create_progress_artifact(
            progress=0.0 if total else 100.0,
            key=_artifact_key(incident_key, f"progress-{step}"),
            description=self._text(),
        )
        self.artifact_id = artifact if isinstance(artifact, UUID) else None

    def _text(self) -> str:
        if not self.count:
            return f"{self.step}: nothing left to do"
        return f"{self.step}: {self.done:,} of {self.count:,} done"

    def advance(self, cases: int) -> None:
        """Move the artifact after each batch: its bar and its text say done / total."""
        self.done += cases
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id,
                                     min(100.0, 100.0 * self.done / self.total),
                                     description=self._text())
