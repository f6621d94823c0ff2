"""Values from the platform's rows, made inert before they reach operators' artifacts.

Rule names, incident keys, operators' notes and reasons come from database rows that
other people wrote. Written verbatim into a markdown artifact, `x](https://evil.test)` or
`![t](https://evil.test/pixel.png)` becomes a link or a tracking image in the preview an
operator reads before approving, a bare https://evil.test a link, `<img ...>` becomes
HTML, and a `|` breaks the table.
`md` escapes a value for markdown text and table cells; `cell` cleans one for a table
artifact, which the UI shows as plain text.
"""

from __future__ import annotations

import re
import unicodedata

# Every ASCII punctuation character CommonMark lets a backslash escape, less the ones
# written as HTML entities below.
_MARKDOWN_PUNCTUATION = frozenset("\\`*_{}[]()#+-!|~=$%,;?@^")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
             "/": "&#47;", ".": "&#46;", ":": "&#58;"}
MAX_LENGTH = 500
# Escapes do not stop a bare address from becoming a link: Prefect's UI (remark-gfm's
# autolink literals) looks for https://..., www.... and a@b.c in the text after escapes
# and entities are read. A word joiner (U+2060, invisible) where each would begin to match
# keeps it text: after the scheme, after "www", before the "@" of an address.
WORD_JOINER = "\u2060"
_AUTOLINKS = re.compile(r"(?i)(?<=https)(?=://)|(?<=http)(?=://)|(?<=www)(?=\.)"
                        r"|(?<=[-.\w+])(?=@[-\w]+(?:\.[-\w]+)+)")


def _printable(char: str) -> str:
    """Line breaks, tabs and other control or format characters become a space."""
    return " " if unicodedata.category(char)[0] in "CZ" and char != " " else char


def md(value: object, *, limit: int | None = MAX_LENGTH) -> str:
    """`value` as inert markdown text: no link, image, HTML, emphasis or table break.

    Cut at `limit` characters (with "…"); `limit=None` keeps all of it, for a list that
    promises whole values (the review list's reasons).
    """
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    text = _AUTOLINKS.sub(WORD_JOINER, "".join(_printable(char) for char in text))
    out = []
    for char in text:
        if char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char in _MARKDOWN_PUNCTUATION:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def cell(value: object) -> object:
    """A table artifact's cell: numbers as they are, text on one line, bounded."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = "".join(_printable(char) for char in str(value))
    return text if len(text) <= MAX_LENGTH else text[:MAX_LENGTH] + "…"
