"""Every relative link in README.md and docs/*.md reaches a file that exists, and every
link to a section names a heading that page has (GitHub's anchors).

A guide moved or a heading renamed would otherwise leave a reader at a dead link.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fence = [], ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces
    made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(1)
            if not SCHEME.match(target):
                links.append(target)
    return links


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(
                destination):
            broken.append(f"{target}: no heading '{anchor}' in {destination.name}")
    return broken


def test_the_pages_are_found() -> None:
    assert ROOT / "README.md" in PAGES
    assert len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has dead links"


def test_a_dead_link_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading, `with` code\n\n## Twice\n\n## Twice\n",
                                       encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [ok](there.md#twice-1)\n"
        "[web](https://example.com/x.md) `[code](nowhere.md)` ![img](missing.png)\n"
        "```\n[in a block](nowhere.md)\n```\n"
        "[gone](nowhere.md) [no heading](there.md#elsewhere)\n", encoding="utf-8")
    assert broken_links(page) == ["missing.png: no such file", "nowhere.md: no such file",
                                  "there.md#elsewhere: no heading 'elsewhere' in there.md"]


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every command a user can type, as `reinstate db upgrade` (a group is what has
    commands of its own)."""
    found = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if hasattr(command, "commands"):
            found += command_paths(command, (*prefix, name))
        else:
            found.append(" ".join(("reinstate", *prefix, name)))
    return found


def documented_commands(page: str) -> set[str]:
    """The commands the commands table of `page` has a row for: each `reinstate ...` in a
    row's first cell."""
    found = set()
    for line in page.splitlines():
        if line.startswith("| `reinstate"):
            first_cell = line[1:].split(" | ", 1)[0]
            found |= {match.group(1) for match in
                      re.finditer(r"`(reinstate(?: [a-z][a-z-]*)+)", first_cell)}
    return found


def test_the_commands_table_lists_every_command() -> None:
    import typer

    from commands.reinstate import app

    commands = command_paths(typer.main.get_command(app))
    assert {"reinstate serve", "reinstate reconcile", "reinstate review list",
            "reinstate notices resend", "reinstate db upgrade"} <= set(commands)
    table = documented_commands((ROOT / "docs" / "commands.md").read_text(encoding="utf-8"))
    assert [command for command in commands if command not in table] == []


def test_the_commands_check_sees_a_missing_row() -> None:
    page = ("| `reinstate run KEY` | runs `reinstate report` |\n"
            "| `reinstate db upgrade`, `reinstate review decide CASE --note T` | migrates |\n")
    assert documented_commands(page) == {"reinstate run", "reinstate db upgrade",
                                         "reinstate review decide"}
