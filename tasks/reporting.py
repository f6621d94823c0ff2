"""Tasks that show operators what a run found and did, as Prefect artifacts."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from reinstatement.lifecycle import AWAITING_APPROVAL_WORDS
from reinstatement.markdown import md
from reinstatement.models import Case, Incident
from reinstatement.reports import OUTCOME_MEANINGS, OUTCOMES, incident_report, would_restore
from reinstatement.resources import resources
from reinstatement.review import cases_awaiting_review
from reinstatement.wording import sentence

SAMPLES_PER_OUTCOME = 5
MAX_KEY_LENGTH = 100  # Prefect's limit on an artifact key


def _artifact_key(incident_key: str, what: str) -> str:
    """The artifact key of one incident's `what`: distinct for distinct incident keys.

    Artifact keys allow lowercase letters, digits and dashes only, so `INC-1`, `inc-1` and
    `INC.1` would all read `inc-1`: a digest of the exact key keeps them apart.
    """
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-"
                      for c in incident_key.lower()).strip("-")
    digest = hashlib.sha256(incident_key.encode()).hexdigest()[:10]
    room = MAX_KEY_LENGTH - len(what) - len(digest) - 2
    return f"{what}-{cleaned[:min(60, room)]}-{digest}"


def _publish_once_per_run(key: str, description: str, *, markdown: str | None = None,
                          table: list[dict[str, Any]] | None = None) -> UUID | None:
    """Publish a markdown (or table) card under `key` that this flow run shows once: when
    the key's newest version is this run's, that card is brought up to date in place;
    otherwise a new version is made. Either way the key's newest version is what was
    published last. Returns the card's artifact id.

    A deployment run resumed after the operator's decision runs again from the top: it
    reaches the preview again, publishes it once more when the decision is taken (it then
    names the decision), and publishes the report when it suspends and again at its end;
    each time a new version, its Artifacts tab would show the same key twice.
    """
    from prefect.artifacts import TableArtifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    data = markdown if table is None else TableArtifact(table=table).format()
    if run_id is not None and isinstance(data, str):
        with get_client(sync_client=True) as client:
            newest = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[key])), limit=1)
            if newest and str(newest[0].flow_run_id) == str(run_id):
                client.update_artifact(newest[0].latest_id, ArtifactUpdate(
                    data=data, description=description))
                return newest[0].latest_id
    if table is None:
        created = create_markdown_artifact(key=key, markdown=markdown or "",
                                           description=description)
    else:
        created = create_table_artifact(key=key, table=table, description=description)
    return created if isinstance(created, UUID) else None  # (awaitable from async code)


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
    return _artifact_key(incident_key, f"preview-plan-{plan}")


def samples_key(incident_key: str, plan: str) -> str:
    """The key of the sample cases that go with the preview of `plan`."""
    return _artifact_key(incident_key, f"samples-plan-{plan}")


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
    _publish_once_per_run(
        preview_key(incident_key, plan), markdown=_markdown(report, title, counts),
        description=f"{what} of plan {plan} of incident {md(incident_key)}: its counts per "
        "outcome, the rule versions, and what restoring it would do")
    _publish_once_per_run(
        samples_key(incident_key, plan),
        markdown=_samples_markdown(incident_key, plan, _samples(incident_key)),
        description=f"Sample cases of plan {plan} of incident {md(incident_key)}: up to "
        f"{SAMPLES_PER_OUTCOME} per outcome, each with why (they go with its preview)")
    return dict(counts)


REVIEW_PAGE_ROWS = 200  # cases per page of the review list in the UI


def review_page_key(incident_key: str, page: int) -> str:
    """Page `page` of the incident's review list: page 1 under the incident's review key
    (`review-...`), page n under `review-page-n-...`."""
    return _artifact_key(incident_key, "review" if page == 1 else f"review-page-{page}")


def review_queue_rows(incident_key: str) -> list[dict[str, Any]]:
    """Every case of the incident waiting for review, oldest first, read once: the pages
    made from it agree with each other and with the count they state."""
    with resources().engine.connect() as conn:
        return list(cases_awaiting_review(conn, incident_key))


def _review_page(incident_key: str, cases: list[dict[str, Any]], page: int, pages: int,
                 first: int, waiting: int, ids: list[UUID] | None = None) -> str:
    """Page `page` of the review list; `ids`: every page's artifact, for the links from
    one page to its neighbours, the first and the last of the same list."""
    lines = [f"# Cases waiting for review: {md(incident_key)}", ""]
    if not waiting:
        return "\n".join([*lines, "No case of this incident waits for review."])
    last = first + len(cases) - 1
    lines += [f"Page {page} of {pages}: cases {first:,} to {last:,} of {waiting:,} waiting, "
              "oldest (lowest case id) first. Every reason is shown whole.", ""]
    if ids:
        # Relative links: an artifact's page is .../artifacts/artifact/ID wherever the UI
        # is served.
        near = dict.fromkeys(n for n in (1, page - 1, page + 1, pages) if 1 <= n <= pages
                             and n != page)
        lines += ["Pages: " + " · ".join(f"[page {n}](../artifact/{ids[n - 1]})"
                                         for n in near) + ". Page n of the newest list is the "
                  f"artifact `{review_page_key(incident_key, 2).replace('-2-', '-n-', 1)}` "
                  f"(page 1: `{review_page_key(incident_key, 1)}`).", ""]
    lines += ["Decide a case with the review-case deployment: Deployments, review-case, Run, "
              "Custom run, and its case id. `reinstate review list KEY --csv` gives the "
              "whole list as CSV.", "",
              "| case id | account | reason |", "| ---: | ---: | --- |"]
    lines += [f"| {int(case['case_id'])} | {int(case['account_id'])} | "
              f"{md(case['why'], limit=None)} |" for case in cases]
    return "\n".join(lines)


def _empty_page(incident_key: str) -> str:
    return "\n".join([
        f"# Cases waiting for review: {md(incident_key)}", "",
        "This page is empty now: fewer cases wait than when it was written. The first "
        f"page, `{review_page_key(incident_key, 1)}`, says how many pages the list has "
        "now."])


def _published_review_pages(incident_key: str) -> dict[int, str]:
    """The pages after the first that the incident's review list has had, each with its
    newest markdown."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    digest = _artifact_key(incident_key, "x").rsplit("-", 1)[1]
    found: dict[int, str] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            batch = client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(
                    like_=f"review-page-%-{digest}")), limit=200, offset=offset)
            for artifact in batch:
                number = str(artifact.key).removeprefix("review-page-").split("-", 1)[0]
                if number.isdigit() and review_page_key(incident_key, int(number)) == \
                        artifact.key:
                    found[int(number)] = str(artifact.data)
            if len(batch) < 200:
                return found
            offset += 200


def publish_review_queue(incident_key: str, page_rows: int = REVIEW_PAGE_ROWS) -> int:
    """The incident's review list: every case waiting, oldest first, `page_rows` to a
    markdown artifact (the UI wraps a long reason in a markdown table; a table artifact's
    cell cuts it off). Page 1 keeps the incident's review key and its description gives
    the page count; a page the list no longer reaches is published again as empty.
    Each call publishes the list as it is now (after a run, after each review decision);
    returns how many cases wait."""
    cases = review_queue_rows(incident_key)
    waiting = len(cases)
    pages = max(1, -(-waiting // page_rows))
    parts = [(cases[(n - 1) * page_rows:n * page_rows], (n - 1) * page_rows + 1)
             for n in range(1, pages + 1)]
    ids: list[UUID] = []
    for page, (part, first) in enumerate(parts, start=1):
        if page == 1:
            more = (f"; pages 2 to {pages} are the artifacts review-page-2-... to "
                    f"review-page-{pages}-..." if pages > 1 else "")
            description = (
                f"Review list of incident {md(incident_key)}, page 1 of {pages}: "
                f"{waiting:,} cases waiting for a reviewer, oldest first, with whole "
                f"reasons{more}. Decide one with the review-case deployment (Deployments, "
                "review-case, Run, Custom run) and its case id.")
        else:
            description = (f"Review list of incident {md(incident_key)}, page {page} of "
                           f"{pages}: cases {first:,} to {first + len(part) - 1:,} of "
                           f"{waiting:,} waiting for a reviewer")
        published = _publish_once_per_run(
            review_page_key(incident_key, page),
            markdown=_review_page(incident_key, part, page, pages, first, waiting),
            description=description)
        if published is not None:
            ids.append(published)
    if pages > 1 and len(ids) == pages:
        # Each page links to the pages of the same list, known once every page exists.
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            for page, ((part, first), artifact_id) in enumerate(zip(parts, ids, strict=True),
                                                                start=1):
                client.update_artifact(artifact_id, ArtifactUpdate(data=_review_page(
                    incident_key, part, page, pages, first, waiting, ids)))
    empty = _empty_page(incident_key)
    for page, newest in sorted(_published_review_pages(incident_key).items()):
        if page > pages and newest != empty:
            _publish_once_per_run(
                review_page_key(incident_key, page), markdown=empty,
                description=f"Review list of incident {md(incident_key)}, page {page}: "
                f"empty now (the list has {pages} page{'s' if pages > 1 else ''})")
    return waiting


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(incident_key: str) -> dict[str, Any]:
    """Publish the incident's report (markdown), its counts and audit trail (tables), and
    its review list; republished whenever they change, each under one key per incident,
    so the key's newest version is the incident as it is now."""
    report = _report(incident_key)
    publish_review_queue(incident_key)
    key = _artifact_key(incident_key, "report")
    _publish_once_per_run(
        key, markdown=_markdown(report, "Reinstatement report", report["outcomes"]),
        description=f"Report of incident {md(incident_key)}: its status, plan and decision, "
        f"counts per outcome, notices and runs, as of this run (the newest version, "
        f"Artifacts, {key}, is the incident now)",
    )
    _publish_once_per_run(
        _artifact_key(incident_key, "outcomes"),
        table=[{"outcome": o, "accounts": report["outcomes"].get(o, 0)} for o in OUTCOMES]
        + [{"outcome": f"notice {s}", "accounts": n} for s, n in report["notices"].items()],
        description=f"Report counts of incident {md(incident_key)}: accounts per outcome "
        "and notices per state, as a table",
    )
    _publish_once_per_run(
        _artifact_key(incident_key, "audit"),
        table=_audit_rows(incident_key) or [{"at": "-", "to": "no transition yet"}],
        description=f"Audit trail of incident {md(incident_key)}: each transition of the "
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
        description="All incidents, newest first, each with its status, plan, who declared "
        "and who decided, counts and last run")
    return rows


# How often a step's progress card is brought up to date while the step runs: its work is
# read at least every PROGRESS_SECONDS, or each time PROGRESS_SHARE of it is done at the
# pace seen so far, whichever comes first, but at most once every PROGRESS_MIN_SECONDS (one
# count statement and, when the count moved, one call to Prefect's server each time).
PROGRESS_SECONDS = 4.0
PROGRESS_SHARE = 0.02
PROGRESS_MIN_SECONDS = 1.0

# What each step's count counts, as its card says it.
STEP_WORK = {"verify": "cases judged", "settle": "cases judged and settled",
             "restore": "accounts restored", "notify": "notices handled"}


def progress_text(step: str, done: int, total: int, *, why: str | None = None,
                  final: bool = False, detail: str | None = None) -> str:
    """The line a step's progress card shows: while it runs, when it is done, and when it
    stopped before its work was (`why`)."""
    if not total:
        return f"{step}: nothing left to do"
    work = STEP_WORK.get(step, "done")
    if why is not None:
        return f"{step}: stopped at {done:,} of {total:,} {work}: {why}"
    if final:
        return f"{step}: {total:,} of {total:,} done" + (f": {detail}" if detail else "")
    return f"{step}: {done:,} of {total:,} {work}"


def stopped_by(exc: BaseException) -> str:
    """Why a step stopped, from what ended it, in the words of its progress card."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return "the run was stopped (cancelled, or its process ended)"
    if isinstance(exc, KeyboardInterrupt):
        return "the run was interrupted"
    return "the step failed; the run's log says why"


def _run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _create_progress(key: str, progress: float, description: str,
                     metadata: dict[str, str]) -> UUID:
    """A progress artifact of this flow (or task) run, with what a later process needs to
    finish it (`finish_progress_left_open`) in its metadata."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.utilities.context import get_task_and_flow_run_ids

    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    with get_client(sync_client=True) as client:
        return client.create_artifact(ArtifactCreate(
            type="progress", key=key, description=description, data=progress,
            metadata_=metadata, flow_run_id=flow_run_id, task_run_id=task_run_id)).id


class Progress:
    """A step's progress artifact: how much of the step's work is committed, while the
    step runs, and a final value when it ends (`finish`).

    A watcher thread reads the work not yet committed (`remaining`, one count statement)
    every PROGRESS_SECONDS, sooner when PROGRESS_SHARE of the step goes faster, and moves
    the card when the count moved; a batch's end (`advance`) moves it at once. Done is the
    count at the start less the count now: notices leave it one by one as they are sent,
    so the card moves within a batch. The calls to Prefect's server are the thread's, never
    the step's: a slow server delays no batch, and a failing call is logged, not raised.
    """

    def __init__(self, incident_key: str, step: str, total: int, *,
                 remaining: Callable[[], int] | None = None, pending_key: str = "",
                 incident: str | None = None) -> None:
        self.step = step
        self.total = max(total, 0)
        self._remaining = remaining
        self._logger = _run_logger()
        self._counts = threading.Lock()  # never held across a call out of this process
        self._publishing = threading.Lock()  # held across each update of the card
        self._wake = threading.Event()
        self._closed = self._finished = False
        self._batched = self._committed = self._shown = 0
        self._baseline: int | None = None
        self._watcher: threading.Thread | None = None
        self.artifact_id: UUID | None = None
        if self.total and remaining is not None:
            self._baseline = self._read()
        try:
            # A step with nothing left to do (a rerun after the resume, say) is done, not 0%.
            self.artifact_id = _create_progress(
                _artifact_key(incident_key, f"progress-{step}"),
                0.0 if self.total else 100.0, progress_text(step, 0, self.total),
                {"incident": incident_key if incident is None else incident,
                 "step": step, "pending": pending_key, "total": str(self.total),
                 "start": "" if self._baseline is None else str(self._baseline)})
        except Exception as exc:  # noqa: BLE001 - a card is no reason to stop the step
            self._logger.warning("could not create the %s progress card: %s", step, exc)
        if self.artifact_id is not None and self._baseline is not None:
            context = contextvars.copy_context()  # Prefect's settings, client and run
            self._watcher = threading.Thread(target=context.run, args=(self._watch,),
                                             name=f"progress-{step}", daemon=True)
            self._watcher.start()

    @property
    def done(self) -> int:
        """What the card may say is done: never less than it said, never more than all."""
        with self._counts:
            return min(self.total, max(self._shown, self._batched, self._committed))

    def advance(self, cases: int) -> None:
        """A batch ended with `cases` cases (or notices) done: the card moves at once (in
        the watcher's thread; without one, here)."""
        with self._counts:
            self._batched += cases
        if self._watcher is not None:
            self._wake.set()
        else:
            self._publish_if_moved()

    def _read(self) -> int | None:
        """The step's work not yet committed, or None when it could not be read."""
        assert self._remaining is not None
        try:
            return self._remaining()
        except Exception as exc:  # noqa: BLE001 - the next reading may do; the step goes on
            self._logger.warning("could not read the %s step's progress: %s", self.step, exc)
            return None

    def _watch(self) -> None:
        pace = (time.monotonic(), 0)  # when, and what was committed, at the last reading
        next_read = pace[0] + PROGRESS_MIN_SECONDS
        while not self._closed:
            if self._wake.wait(min(max(0.0, next_read - time.monotonic()), 3600.0)):
                self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            if now >= next_read:
                left = self._read()
                if left is not None and self._baseline is not None:
                    with self._counts:
                        self._committed = max(self._committed, self._baseline - left)
                        committed = self._committed
                    wait = PROGRESS_SECONDS
                    if committed > pace[1] and now > pace[0]:
                        rate = (committed - pace[1]) / (now - pace[0])
                        wait = min(wait, max(PROGRESS_MIN_SECONDS,
                                             PROGRESS_SHARE * self.total / rate))
                    pace = (now, committed)
                else:
                    wait = PROGRESS_SECONDS
                next_read = time.monotonic() + wait
                if left == 0:  # all of it committed: only batch ends and `finish` are left
                    next_read = float("inf")
            self._publish_if_moved()

    def _publish_if_moved(self) -> None:
        done = self.done
        if done > self._shown:
            self._publish(done, progress_text(self.step, done, self.total))

    def _publish(self, done: int, text: str, *, final: bool = False,
                 percent: float | None = None) -> None:
        with self._publishing:
            if self.artifact_id is None or (self._finished and not final):
                return
            try:
                update_progress_artifact(
                    self.artifact_id,
                    percent if percent is not None else 100.0 * done / max(self.total, 1),
                    description=text)
            except Exception as exc:  # noqa: BLE001 - a card is no reason to stop the step
                self._logger.warning("could not update the %s progress card: %s", self.step,
                                     exc)
                return
            with self._counts:
                self._shown = max(self._shown, done)

    def finish(self, why: str | None = None, detail: str | None = None) -> None:
        """The card's final value, from the work left now: done (100%), or, when work is
        left, stopped at the count done, with `why` (the step failed, the run was
        stopped, another run holds the rest). `detail`: what a finished step adds."""
        if self._finished:
            return
        self._finished = self._closed = True
        self._wake.set()
        if self.artifact_id is None or not self.total:
            return
        left = self._read() if self._remaining is not None else None
        with self._counts:
            counted = self._baseline is not None and left is not None
            if counted:
                assert self._baseline is not None and left is not None
                self._committed = self._baseline - left
            done = min(self.total, max(self._batched, self._committed, 0))
        if (counted and left == 0) or (not counted and why is None and done >= self.total):
            self._publish(self.total, progress_text(self.step, self.total, self.total,
                                                    final=True, detail=detail),
                          final=True, percent=100.0)
            return
        why = why or "another run holds the rest"
        if not counted:
            why += " (counted from the batches that ended: the database could not be read)"
        self._publish(done, progress_text(self.step, done, self.total, why=why),
                      final=True, percent=min(99.9, 100.0 * done / self.total))


def finish_progress_left_open(flow_run_id: UUID, why: str,
                              remaining: Callable[[str, str], int]) -> int:
    """Finish the progress cards a flow run left mid-way (its process stopped before its
    steps could, as a cancelled run's is): each with the true count, read now, and `why`.
    `remaining(incident, pending key)` counts a step's work left. Returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC)
    latest: dict[str, Any] = {}
    for card in cards:
        latest.setdefault(card.key or str(card.id), card)
    finished = 0
    for card in latest.values():
        meta = card.metadata_ or {}
        if not isinstance(card.data, (int, float)) or card.data >= 100 or not meta.get("start"):
            continue
        total, start = int(meta["total"]), int(meta["start"])
        left = remaining(meta.get("incident", ""), meta.get("pending", ""))
        done = total if left == 0 else min(total, max(start - left, 0))
        step = meta.get("step", "step")
        if left == 0:
            update_progress_artifact(card.id, 100.0, description=progress_text(
                step, total, total, final=True))
        else:
            update_progress_artifact(card.id, min(99.9, 100.0 * done / max(total, 1)),
                                     description=progress_text(step, done, total, why=why))
        finished += 1
    return finished
