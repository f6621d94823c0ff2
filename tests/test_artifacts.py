"""Operators' artifacts: values from the platform's rows are inert, and keys never collide.

The markdown is rendered by a real CommonMark renderer (markdown-it-py, with tables and raw
HTML enabled, as a permissive UI would render it) and the HTML it gives is checked: no
link, image or tag from the data, and every table keeps its shape.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from markdown_it import MarkdownIt

from flows.reconcile import _markdown as reconciliation_markdown
from reinstatement.markdown import cell, md
from tasks.artifacts import artifact_key
from tasks.reporting import _markdown

HOSTILE = [
    "x](https://evil.test) ![t](https://evil.test/pixel.png) [Approve",
    "<img src=https://evil.test/p.png onerror=alert(1)><script>alert(2)</script>",
    "a | b | c\n| --- | --- |\n| forged | row |",
    "**bold** _it_ `code` # heading\r\n> quote",
    "[click](javascript:alert(1)) <https://evil.test> www.evil.test https://evil.test",
    "&lt;b&gt; &amp; \\ \\| \u202e\u0000",
]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def render(markdown: str) -> list[tuple[str, dict[str, str | None]]]:
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    parser = Tags()
    parser.feed(html)
    return parser.tags


ALLOWED_TAGS = {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "strong"}


def report_with(value: str) -> dict[str, Any]:
    return {
        "incident": value, "status": "rejected", "status_words": value,
        "approval": {"decision": "rejected", "by": value, "note": value, "at": value},
        "faulty_versions": [{"faulty": value, "corrected": value},
                            {"faulty": value, "corrected": None}],
        "window": {"since": value, "until": None},
        "notices": {value: 3},
        "pins_restored": 0,
        "runs": [{"dry_run": False, "started_at": value, "finished_at": None,
                  "status": value}],
    }


@pytest.mark.parametrize("value", HOSTILE)
def test_the_report_and_preview_markdown_are_inert(value: str) -> None:
    markdown = _markdown(report_with(value), "Preview before restore", {value: 1})
    tags = render(markdown)
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS, tags
    assert not [a for _, a in tags if set(a) - {"style"}], tags  # no href, src, onerror
    assert {a.get("style") for _, a in tags} <= {None, "text-align:right"}
    # Each table has its header, its rows and two columns: nothing broke out of a cell.
    # versions: header + 2; outcomes: header + 5 + total; notices: header + 1; runs: 1 + 1
    assert [tag for tag, _ in tags].count("tr") == (1 + 2) + (1 + 5 + 1) + (1 + 1) + (1 + 1)
    for row in re.findall(r"^\|.*\|$", markdown, flags=re.MULTILINE):
        assert len(re.findall(r"(?<!\\)\|", row)) in (3, 5), row
    # The text is still there for the operator to read, as text.
    assert "evil" in markdown or "alert" in markdown or "bold" in markdown or "lt" in markdown


@pytest.mark.parametrize("value", HOSTILE)
def test_the_reconciliation_markdown_is_inert(value: str) -> None:
    findings = {
        "started_at": value, "dry_run": False, "rebanned": [], "auto_incidents": [value],
        "uncovered": [{"version": value, "standing_bans": 2, "sample_accounts": [1, 2]}],
        "resumed": [], "awaiting_operator": [value],
        "notices": {}, "invariants": {"banned_without_cause": [], "pins_left_hidden": [],
                                      "pins_repaired": 0, "notices_without_reinstatement": []},
    }
    tags = render(reconciliation_markdown(findings))
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS | {"ul", "li"}, tags
    assert not [a for _, a in tags if set(a) - {"style"}], tags


def test_escaped_text_reads_as_written() -> None:
    rendered = MarkdownIt("commonmark").render(md("spam_burst@7 (a|b) 2025-04-01T00:00:00Z"))
    assert rendered == "<p>spam_burst@7 (a|b) 2025-04-01T00:00:00Z</p>\n"


def test_table_cells_are_one_bounded_line() -> None:
    assert cell("a\nb\r\nc\td") == "a b  c d"
    assert cell(5) == 5 and cell(None) is None
    assert len(str(cell("x" * 10_000))) <= 501


def test_distinct_incident_keys_get_distinct_artifact_keys() -> None:
    keys = ["INC-1", "inc-1", "INC.1", "INC_1", "INC:1", "inc--1"]
    artifact_keys = {artifact_key(key, "report") for key in keys}
    assert len(artifact_keys) == len(keys)
    for key in artifact_keys:
        assert re.fullmatch(r"[a-z0-9-]+", key) and len(key) <= 100, key
    assert artifact_key("INC-1", "report") == artifact_key("INC-1", "report")
    assert len(artifact_key("I" * 200, "progress-restore")) <= 100


def _state(status: str, note: str = "") -> Any:
    from datetime import UTC, datetime

    from reinstatement.incident_states import DecisionRef, IncidentState, IncidentStatus
    from reinstatement.plans import PlanRef

    at = datetime(2025, 4, 20, tzinfo=UTC)
    plan = PlanRef(7, "0d380e9f8300" + "a" * 52, 209, False, at, "run", None)
    decision = DecisionRef("reject", "ana", "cli", None, note, at, 7) if note else None
    return IncidentState(1, "INC-1", IncidentStatus(status), True, "root", "cli", plan,
                         decision)


def rendered_text(markdown: str) -> str:
    return re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(markdown))


@pytest.mark.parametrize(("note", "said"), [
    ("samples read.", "samples read."), ("samples read", "samples read."),
    ("really?", "really?"), ("fine!  ", "fine!"), ("see the preview…", "see the preview…"),
])
def test_a_note_ending_with_a_full_stop_gets_one(note: str, said: str) -> None:
    from reinstatement.incident_states import TransitionRefused, refuse_if_rejected
    from reinstatement.wording import sentence

    assert sentence(note) == said
    report = {**report_with("INC-1"), "status": "completed", "status_words": "completed",
              "decision": {"decision": "approve", "by": "ana (CLI)", "at": "then",
                           "note": note, "plan": "0d380e9f8300"}}
    text = rendered_text(_markdown(report, "Reinstatement report", {}))
    assert f"approved by ana (CLI) at then: {said}\n" in text, text
    assert ".." not in text.replace("...", "")
    # A rejection's words go on after its note in one sentence, not two full stops.
    with pytest.raises(TransitionRefused) as refused:
        refuse_if_rejected(_state("rejected", note))
    assert f"rejected by ana: {said} Nothing more is done for it" in str(refused.value)


def test_the_preview_says_awaiting_approval_once() -> None:
    """The heading "Awaiting approval" and the status's own words ("awaiting approval of
    plan ...: read it with ...") make one sentence, not "Awaiting approval. awaiting
    approval: ..."."""
    state = _state("awaiting_approval")
    report = {**report_with("INC-1"), "status": "awaiting_approval",
              "status_words": state.describe(), "decision": None}
    text = rendered_text(_markdown(report, "Preview before restore", {}))
    assert not re.search(r"awaiting approval\W*awaiting approval", text, re.IGNORECASE), text
    (line,) = [line for line in text.splitlines() if line.startswith("Awaiting approval")]
    assert line.startswith("Awaiting approval of plan 0d380e9f8300: read it with "
                           "`reinstate plan INC-1`, then someone other than its declarer ")
    assert line.endswith("`reinstate reject INC-1 --note WHY`."), line


# What Prefect's UI turns into a link in text, after escapes and entities are read
# (remark-gfm's autolink literals: mdast-util-gfm-autolink-literal's two expressions).
GFM_AUTOLINKS = [re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE),
                 re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")]


ADDRESSES = ["mail ops@evil.test or HTTPS://Evil.test/x",
             "see www.evil.test/p?q=1, mailto:a.b+c@evil.co.uk"]


@pytest.mark.parametrize("value", [*HOSTILE, *ADDRESSES])
def test_a_web_address_in_a_value_stays_text_in_the_uis_markdown(value: str) -> None:
    from html import unescape

    from reinstatement.markdown import WORD_JOINER

    text = unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").render(md(value))))
    assert not [p.pattern for p in GFM_AUTOLINKS if p.search(text)], text
    if value in ADDRESSES:  # only invisible word joiners were added
        assert text.strip().replace(WORD_JOINER, "") == value
