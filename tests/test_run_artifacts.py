"""What a run shows on its Artifacts tab: every case waiting for review, each reason whole,
and cards an operator can tell apart.

The review list is read back through the Prefect client and its markdown rendered by a
CommonMark renderer with tables (markdown-it-py, as in tests/test_artifacts.py), so what is
checked is the text a person reads in the UI's markdown view, where a long cell wraps (a
table artifact's cell is cut to one line: `truncate` in the UI's table view).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from uuid import uuid4

import pytest
from markdown_it import MarkdownIt
from prefect import flow
from sqlalchemy import Engine, insert, select, update
from typer.testing import CliRunner

from commands.reinstate import app
from flows.reinstate_incident import reinstate_incident
from reinstatement import runner
from reinstatement.markdown import WORD_JOINER
from reinstatement.models import Case, Incident
from reinstatement.seed import SeedOptions, seed
from tasks.artifacts import artifact_key
from tasks.review_list import review_page_key
from tests.factories import approve
from tests.factories import seeded_incident_request as incident_request

pytestmark = pytest.mark.prefect


@pytest.fixture
def key() -> str:
    """An incident key of this test's own: the session's Prefect server keeps every
    artifact of the tests before it."""
    return f"INC-{uuid4().hex[:12]}"


class Cells(HTMLParser):
    """The rows of every table in rendered HTML (each cell's text), and every link."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rendered(markdown: str) -> Cells:
    cells = Cells()
    cells.feed(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))
    return cells


def review_rows(markdown: str) -> list[dict[str, Any]]:
    """The rows of a page of the review list, as a person reads them (less the invisible
    word joiners that keep a web address in a reason from becoming a link)."""
    table = rendered(markdown).rows
    assert table[0] == ["case id", "account", "reason"], table[:1]
    return [{"case id": int(case), "account": int(account),
             "reason": text.replace(WORD_JOINER, "")} for case, account, text in table[1:]]


def latest(keys: list[str]) -> dict[str, Any]:
    """The newest version of each key that has one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    with get_client(sync_client=True) as client:
        return {str(a.key): a for a in client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(
                any_=keys)), limit=len(keys))}


def versions(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))


def reason(number: int) -> str:
    """A reason longer than any cut (500 characters), with what markdown would act on."""
    return (f"needs review: spam_burst@8 is unknown on ban {number} by spam_burst@7 "
            "(verified_email absent; links_per_hour null | repeat_text_ratio 'n/a') "
            + "*evidence* [x](https://evil.test) <b>&amp; a_b_c ` # > " * 9
            + f"end of reason {number}.")


@flow
def publish_review_list(key: str, page_rows: int) -> int:
    from tasks.review_list import publish_review_queue

    return publish_review_queue(key, page_rows=page_rows)


def waiting_for_review(engine: Engine, key: str, count: int) -> list[tuple[int, int, str]]:
    """The seeded incident registered under `key`, with `count` cases waiting for review:
    (case id, account, reason), oldest first."""
    seed(engine, SeedOptions(accounts=20, seed=1))
    incident = runner.register(engine, incident_request(incident_key=key), "test")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(Case), [
            {"incident_id": incident.id, "account_id": 1_000_000 + n, "round": 1,
             "state": "review", "outcome": "needs_review",
             "reasons": {"summary": reason(n)}, "created_at": now, "updated_at": now}
            for n in range(count)])
    return review_list(engine, key)


def review_list(engine: Engine, key: str) -> list[tuple[int, int, str]]:
    with engine.connect() as conn:
        return [(row.id, row.account_id, row.reasons["summary"]) for row in conn.execute(
            select(Case.id, Case.account_id, Case.reasons).join(Incident).where(
                Incident.key == key, Case.state == "review").order_by(Case.id))]


def pages_as_published(key: str, pages: int
                       ) -> tuple[list[tuple[int, int, str]], dict[str, Any]]:
    """The rows of the review list's pages 1 to `pages`, in page order, and the pages."""
    keys = [review_page_key(key, n) for n in range(1, pages + 1)]
    published = latest(keys)
    rows: list[tuple[int, int, str]] = []
    for page in keys:
        rows += [(row["case id"], row["account"], row["reason"])
                 for row in review_rows(str(published[page].data))]
    return rows, published


def test_the_review_list_reaches_every_case_with_its_whole_reason(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], key: str
) -> None:
    """773 cases at 100 a page: eight pages that together list every case once, oldest
    first, each reason whole and inert; the first page's description gives the page count
    and each page links to its neighbours, the first and the last. When fewer cases wait,
    the pages past the end say they are empty (once), and the CLI's CSV is the same
    list."""
    expected = waiting_for_review(engine, key, 773)
    assert len(expected) == 773 and all(len(text) > 500 for _, _, text in expected)
    assert publish_review_list(key, 100) == 773

    rows, published = pages_as_published(key, 8)
    assert rows == expected
    first = published[review_page_key(key, 1)]
    assert first.type == "markdown" and "page 1 of 8: 773 cases waiting" in first.description
    assert "Page 1 of 8: cases 1 to 100 of 773" in str(first.data)
    assert "cases 701 to 773 of 773" in published[review_page_key(key, 8)].description
    assert latest([review_page_key(key, 9)]) == {}
    assert review_page_key(key, 1) == artifact_key(key, "review")  # the key it had
    # The only links are the pages' own: nothing in a reason became one.
    ids = [published[review_page_key(key, n)].latest_id for n in range(1, 9)]
    page_3 = rendered(str(published[review_page_key(key, 3)].data))
    assert page_3.links == [f"../artifact/{ids[n - 1]}" for n in (1, 2, 4, 8)]
    page_1 = rendered(str(published[review_page_key(key, 1)].data))
    assert page_1.links == [f"../artifact/{ids[n - 1]}" for n in (2, 8)]
    for page in published:
        assert all(link.startswith("../artifact/") for link in rendered(
            str(published[page].data)).links)

    # 700 cases decided: one page left, pages 2 to 8 say they are empty.
    with engine.begin() as conn:
        conn.execute(update(Case).where(Case.id.in_([c for c, _, _ in expected[:700]]))
                     .values(state="closed", outcome="upheld"))
    assert publish_review_list(key, 100) == 73
    rows, published = pages_as_published(key, 1)
    assert rows == expected[700:] == review_list(engine, key)
    assert "page 1 of 1: 73 cases waiting" in published[review_page_key(key, 1)].description
    stale = latest([review_page_key(key, n) for n in range(2, 9)])
    assert len(stale) == 7
    for artifact in stale.values():
        assert "empty now" in artifact.description and "| case id" not in str(artifact.data)
    # Published again with nothing changed, an empty page gets no new version.
    publish_review_list(key, 100)
    assert len(versions(review_page_key(key, 5))) == 2
    assert len(versions(review_page_key(key, 1))) == 3

    result = CliRunner().invoke(app, ["review", "list", key, "--csv"])
    assert result.exit_code == 0, result.output
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == ["case_id", "incident", "account_id", "round", "reason"]
    assert [(int(c), int(a), text) for c, _, a, _, text in table[1:]] == expected[700:]
    both = CliRunner().invoke(app, ["review", "list", key, "--csv", "--json"])
    assert both.exit_code == 2


def test_a_typical_approval_run_shows_each_card_once_and_says_what_it_is(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], key: str
) -> None:
    """A dry run, a run that ends awaiting approval, the approval (its note ending with a
    full stop) and the run that restores: on each run's Artifacts tab every key appears
    once and every description is its own and says what the card is; the report has one
    key per incident, whose newest version is the last run's and the incident now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    seed(engine, SeedOptions(accounts=300, seed=9))
    reinstate_incident(incident_request(incident_key=key, dry_run=True, require_approval=True))
    reinstate_incident(incident_request(incident_key=key, require_approval=True))
    plan = approve(engine, key, note="samples read.")
    reinstate_incident(incident_request(incident_key=key, require_approval=True))

    digest = artifact_key(key, "x").rsplit("-", 1)[1]  # in each key of this incident
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=digest)), limit=200)
    assert 0 < len(artifacts) < 200 and all(a.flow_run_id for a in artifacts)
    runs: dict[Any, list[Any]] = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        runs.setdefault(artifact.flow_run_id, []).append(artifact)
    assert len(runs) == 3
    kinds = ("Dry-run preview of plan ", "Preview, before anything is restored, of plan ",
             "Sample cases of plan ", "Review list of incident ", "Report of incident ",
             "Report counts of incident ", "Audit trail of incident ")
    steps = re.compile(r"^(verify|restore|notify|settle|preview|plan): ")
    for cards in runs.values():
        keys = [card.key for card in cards]
        assert len(keys) == len(set(keys)), keys
        descriptions = [card.description for card in cards]
        assert len(descriptions) == len(set(descriptions)), descriptions
        for card in cards:
            assert card.description.startswith(kinds) or steps.match(card.description), (
                card.key, card.description)
    dry, waiting, restoring = runs.values()
    assert sum(card.description.startswith("Dry-run preview") for card in dry) == 1
    assert sum(card.description.startswith("Preview, before") for card in waiting) == 1
    assert not any(card.description.startswith(("Preview", "Dry-run")) for card in restoring)

    report_key = artifact_key(key, "report")
    assert all(sum(card.key == report_key for card in cards) == 1 for cards in runs.values())
    (newest,) = latest([report_key]).values()
    assert newest.latest_id == next(card.id for card in restoring if card.key == report_key)
    with engine.connect() as conn:
        status = conn.execute(select(Incident.status).where(Incident.key == key)).scalar_one()
    assert status == "completed" and newest.data.startswith("# Reinstatement report")

    # The approval's note is one sentence; the preview says "awaiting approval" once.
    text = MarkdownIt("commonmark").enable("table").render(str(newest.data))
    assert "approved by ana (OS login on the command line) at" in text
    assert "samples read." in text and "samples read.." not in text
    preview = next(card for card in waiting if card.description.startswith("Preview"))
    said = MarkdownIt("commonmark").enable("table").render(str(preview.data))
    assert not re.search(r"awaiting approval\W*awaiting approval", said, re.IGNORECASE)
    assert re.search(rf"<strong>Awaiting approval</strong> of plan {plan.short}: read it "
                     rf"with `reinstate plan {key}`, .* --note WHY`\.</p>", said), said


def test_a_run_resumed_from_the_top_shows_its_preview_once_and_up_to_date(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], key: str
) -> None:
    """A deployment run resumed after the operator's decision runs again from the top,
    reaches the preview again and publishes it once more with the decision: its Artifacts
    tab still shows the preview and the samples of that plan once each, the preview naming
    the decision."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.runtime import flow_run

    from reinstatement.lifecycle import state_by_key
    from tasks.reporting import preview_key, publish_preview, publish_report, samples_key

    seed(engine, SeedOptions(accounts=150, seed=3))
    reinstate_incident(incident_request(incident_key=key, require_approval=True))

    @flow
    def preview_decide_preview() -> str:
        publish_preview(key, dry_run=False)
        publish_report(key)  # as the run suspends
        publish_preview(key, dry_run=False)  # the run from the top, after the Resume
        approve(engine, key, note="samples read")
        publish_preview(key, dry_run=False)  # once the decision is taken
        publish_report(key)  # at its end
        return str(flow_run.get_id())

    run_id = preview_decide_preview()
    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[run_id])))
    with engine.connect() as conn:
        plan = state_by_key(conn, key).plan
    assert plan is not None
    shown = {card.key: card for card in cards}
    assert sorted(card.key for card in cards) == sorted(
        [preview_key(key, plan.short), samples_key(key, plan.short), review_page_key(key, 1),
         *(artifact_key(key, what) for what in ("report", "outcomes", "audit"))])
    preview = str(shown[preview_key(key, plan.short)].data)
    assert f"Plan {plan.short} approved by ana" in preview and "(approved)" in preview
    assert f"Plan {plan.short} approved by ana" in str(shown[artifact_key(key, "report")].data)
    assert "approved" in str(shown[artifact_key(key, "audit")].data)
    # The card is the key's newest version too.
    (newest,) = latest([preview_key(key, plan.short)]).values()
    assert newest.latest_id == shown[preview_key(key, plan.short)].id
    assert str(newest.data) == preview


def test_a_card_another_run_published_over_is_published_anew(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], key: str
) -> None:
    """A run that publishes its report again after another run published the incident's
    (a reviewer's decision while it waited) makes a new version: the key's newest version
    is always the last one published, never an older card brought up to date."""
    from tasks.reporting import publish_report

    seed(engine, SeedOptions(accounts=150, seed=3))
    reinstate_incident(incident_request(incident_key=key, require_approval=True))
    report_key = artifact_key(key, "report")

    @flow
    def another_run() -> None:
        publish_report(key)

    @flow
    def waiting_run() -> None:
        publish_report(key)
        another_run()
        approve(engine, key, note="samples read")
        publish_report(key)

    waiting_run()
    (newest,) = latest([report_key]).values()
    assert "approved by ana" in str(newest.data)
    assert len(versions(report_key)) == 1 + 3  # the first run's, then three


def test_the_audit_card_shows_each_transition_with_its_whole_reason(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], key: str
) -> None:
    """The audit trail in the UI: every transition of the incident, oldest first, who made
    it and its reason whole and inert (an approval's long note with markdown in it),
    where a table artifact's cell cuts it to one line."""
    from reinstatement.audit import trail
    from reinstatement.incidents import load_incident
    from tasks.reporting import publish_report

    seed(engine, SeedOptions(accounts=150, seed=3))
    reinstate_incident(incident_request(incident_key=key, require_approval=True))
    note = reason(7)
    approve(engine, key, note=note)

    @flow
    def report() -> None:
        publish_report(key)

    report()
    (card,) = latest([artifact_key(key, "audit")]).values()
    assert card.type == "markdown"
    page = rendered(str(card.data))
    assert page.links == []
    header, *rows = page.rows
    assert header == ["at", "from", "to", "who", "why"]
    with engine.connect() as conn:
        expected = list(trail(conn, load_incident(conn, key).id))
    assert len(rows) == len(expected) >= 3
    assert [(row[2], row[4].replace(WORD_JOINER, "")) for row in rows] == [
        (entry["to"], entry["reason"] or "-") for entry in expected]
    assert any(note in row[4].replace(WORD_JOINER, "") for row in rows)
