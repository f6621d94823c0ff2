"""The review list in the UI: every case waiting for a reviewer, in pages of markdown."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from reinstatement.markdown import md
from reinstatement.resources import resources
from reinstatement.review import cases_awaiting_review
from tasks.artifacts import artifact_key, publish_once_per_run

REVIEW_PAGE_ROWS = 200  # cases per page of the review list in the UI


def review_page_key(incident_key: str, page: int) -> str:
    """Page `page` of the incident's review list: page 1 under the incident's review key
    (`review-...`), page n under `review-page-n-...`."""
    return artifact_key(incident_key, "review" if page == 1 else f"review-page-{page}")


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

    digest = artifact_key(incident_key, "x").rsplit("-", 1)[1]
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
        published = publish_once_per_run(
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
            publish_once_per_run(
                review_page_key(incident_key, page), markdown=empty,
                description=f"Review list of incident {md(incident_key)}, page {page}: "
                f"empty now (the list has {pages} page{'s' if pages > 1 else ''})")
    return waiting
