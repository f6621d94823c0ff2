"""The fast path of rendering: each shape of a body rendered by Jinja once, then filled.

A notice's body has few shapes (language, plural form, one rule or several, a display
name or none) and many words (names, the date, the count, the reference). Each shape is
rendered by Jinja once, with stand-ins for the words, into a `Frame`; each notice's words
are then dropped into the frame, and the lines without a word are encoded for the wire
once per shape. What a notice reads is still Jinja's output, character for character:
a frame is made by rendering the template itself and checked twice before it is used,
and a template that does more with a word than print it is never framed (`frameable`).
The plain path, `template.render` for every notice, is `NoticeRenderer`'s in render.py;
tests/test_notice_render.py compares the two byte for byte.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import markupsafe
from jinja2 import meta, nodes

from reinstatement.notices.mime import shorter_encoding

# The body variables that are a notice's own words (names, the formatted date and count,
# the reference): the templates print them and decide nothing by them. Every other
# variable decides the notice's shape, and so does whether each of these is empty.
PRINTED: tuple[str, ...] = (
    "username", "display_name", "rules", "ban_date", "pins_text", "reference")
# Stand-ins for those words while a shape is rendered (see `Frame`). The "&" shows
# whether the template escaped a word, and private-use characters cannot come from Babel
# or pass into a template's own text unnoticed. The first set numbers the words with
# digits and the second with letters, so that a template that turns one stand-in of the
# first set into another does not do the same to the second.
_STAND_INS = (tuple(f"\ue000&a{index}\ue001" for index in range(len(PRINTED))),
              tuple(f"\ue000&b{letter}\ue001" for letter in "klmnop"[:len(PRINTED)]))
_STAND_IN_RE = re.compile("\ue000(&|&amp;)a([0-9])\ue001")
FRAMES_PER_RENDERER = 4096

_Line = tuple[str | int, ...]  # one line of a body with a word in it: text and slots


@dataclass(frozen=True, slots=True)
class _Lines:
    """Whole lines of a frame with no word in them, in UTF-8 and in quoted-printable."""

    raw: bytes
    qp: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    """One shape of a rendered body: its fixed text, and which word goes between each part.

    Filling a frame is a join (cheaper than str.format), and most of its cost is escaping
    the words for HTML. A frame is made by rendering the template itself (`frames_for`),
    so what a notice reads is Jinja's output, character for character.

    `lines` is the same body for the wire, a line at a time: quoted-printable encodes
    each line on its own (its soft breaks and escapes depend on that line only), so the
    lines without a word are encoded once, here, and only the few with one per notice.
    """

    parts: tuple[str, ...]  # one more than slots
    slots: tuple[int, ...]  # indexes into PRINTED
    # The body with its line ends made LF and a last LF added (`normalise_newlines`):
    # runs of whole lines without a word, and single lines with one (text and slots).
    lines: tuple[_Lines | _Line, ...]

    @classmethod
    def parse(cls, rendered: str, escaped: bool) -> Frame | None:
        """The frame of a body rendered with the first set of stand-ins; None if one of
        them did not come out whole, escaped exactly where the template escapes."""
        pieces = _STAND_IN_RE.split(rendered)
        parts, slots = pieces[0::3], [int(slot) for slot in pieces[2::3]]
        if any(amp != ("&amp;" if escaped else "&") for amp in pieces[1::3]):
            return None
        if any("\ue000" in part or "\ue001" in part for part in parts):
            return None
        return cls(tuple(parts), tuple(slots), _lines(parts, slots))

    def fill(self, words: Sequence[str]) -> str:
        parts = self.parts
        out = [parts[0]]
        for slot, part in zip(self.slots, parts[1:], strict=True):
            out.append(words[slot])
            out.append(part)
        return "".join(out)

    def encode(self, words: Sequence[str]) -> tuple[bytes, bytes]:
        """`encode_body(normalise_newlines(self.fill(words)))`, for words that hold no
        CR or LF (so that every line end is the frame's own)."""
        raw: list[bytes] = []
        qp: list[bytes] = []
        for line in self.lines:
            if isinstance(line, _Lines):
                raw.append(line.raw)
                qp.append(line.qp)
            else:
                text = "".join([piece if isinstance(piece, str) else words[piece]
                                for piece in line]).encode("utf-8", "replace")
                raw.append(text)
                qp.append(binascii.b2a_qp(text, istext=True))
        return shorter_encoding(b"".join(raw), b"".join(qp))


# The text body's frame and the HTML body's.
Frames = tuple[Frame, Frame]


def _lines(parts: Sequence[str], slots: Sequence[int]) -> tuple[_Lines | _Line, ...]:
    """A frame's body a line at a time (see `Frame.lines`). A word holds no line end, so
    line ends made LF part by part are those of the whole body."""
    parts = [part.replace("\r\n", "\n").replace("\r", "\n") for part in parts]
    if not parts[-1].endswith("\n"):
        parts[-1] += "\n"  # a body that ends with a word ends with that word's line
    lines: list[list[str | int]] = []
    line: list[str | int] = []
    for index, part in enumerate(parts):
        *ended, rest = part.split("\n")
        for piece in ended:
            line.append(piece + "\n")
            lines.append(line)
            line = []
        if rest:
            line.append(rest)
        if index < len(slots):
            line.append(slots[index])
    assert not line  # the body ends with a line end
    out: list[_Lines | _Line] = []
    for pieces in lines:
        if any(isinstance(piece, int) for piece in pieces):
            out.append(tuple(pieces))
            continue
        text = "".join(pieces).encode("utf-8", "replace")  # type: ignore[arg-type]
        if out and isinstance(out[-1], _Lines):  # one run of fixed lines, encoded at once
            text = out.pop().raw + text  # type: ignore[union-attr]
        out.append(_Lines(text, binascii.b2a_qp(text, istext=True)))
    return tuple(out)


def _words(variables: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A notice's words in PRINTED's order, as they are and HTML-escaped as Jinja's
    autoescape writes them."""
    words = [variables[name] or "" for name in PRINTED]
    return words, [str(markupsafe.escape(word)) for word in words]


def fill_frames(frames: Frames, variables: dict[str, Any]) -> tuple[str, str]:
    """The text and HTML bodies, as Jinja renders them for these variables."""
    words, escaped = _words(variables)
    return frames[0].fill(words), frames[1].fill(escaped)


def encode_frames(frames: Frames, variables: dict[str, Any]
            ) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]] | None:
    """Each body's (Content-Transfer-Encoding, encoded body), as `encode_body` makes them
    of the filled bodies; None when a word holds a line end (the frame's lines are not
    the body's then), for the caller to encode the filled bodies whole."""
    words, escaped = _words(variables)
    if any("\r" in word or "\n" in word for word in words):
        return None
    return frames[0].encode(words), frames[1].encode(escaped)


def frameable(environment: jinja2.Environment, language: str) -> tuple[bool, tuple[str, ...]]:
    """Whether the language's two bodies can be framed (`_prints_only`), and the variables
    they read besides the words: with which words are empty, those decide a body's shape.
    Those the templates never read (the exact pin count, say) do not, so a long tail of
    pin counts does not make a frame each."""
    reads: set[str] = set()
    framed = all(_prints_only(environment, f"{language}/body.{kind}", set(), reads)
                 for kind in ("txt", "html"))
    return framed, tuple(sorted(reads - set(PRINTED)))


def _prints_only(environment: jinja2.Environment, name: str, seen: set[str],
                 reads: set[str]) -> bool:
    """Whether template `name`, and every template it extends or includes, uses the words
    in PRINTED only to print them: `{{ word }}` or `{{ word or other_word }}`, nothing
    that tests, filters or changes one. Only then is a frame the template's output.

    Adds to `reads` every variable those templates read from what they are given."""
    if name in seen:
        return True
    seen.add(name)
    assert environment.loader is not None
    source = environment.loader.get_source(environment, name)[0]
    tree = environment.parse(source)
    reads |= meta.find_undeclared_variables(tree)
    printed: set[int] = set()

    def printed_words(expr: nodes.Node) -> None:
        if isinstance(expr, nodes.Name):
            printed.add(id(expr))
        elif isinstance(expr, nodes.Or):
            printed_words(expr.left)
            printed_words(expr.right)

    for output in tree.find_all(nodes.Output):
        for expr in output.nodes:
            printed_words(expr)
    if any(node.name in PRINTED and id(node) not in printed
           for node in tree.find_all(nodes.Name)):
        return False
    referenced = list(meta.find_referenced_templates(tree))
    return all(ref is not None and _prints_only(environment, ref, seen, reads)
               for ref in referenced)


def frames_for(cache: dict[tuple[Any, ...], Frames | None], language: str,
               text: jinja2.Template, html: jinja2.Template, shape: tuple[str, ...],
               variables: dict[str, Any]) -> Frames | None:
    """The text and HTML frames of this notice's shape, rendered once per shape into
    `cache` (a renderer's own).

    The shape is every variable the bodies read but the words (`shape`, from
    `frameable`), and which words are empty (and how: None or ""). The frame is Jinja's
    own output for stand-in words, checked twice: every stand-in must come out whole,
    escaped exactly where Jinja escapes, and a second set of stand-ins dropped into the
    frame must give what Jinja renders for it. A shape that fails either check is
    rendered by Jinja every time (None).
    """
    key = (language, *[variables[name] for name in shape],
           *[True if variables[name] else variables[name] for name in PRINTED])
    try:
        return cache[key]
    except KeyError:
        pass
    except TypeError:  # a variable the templates read that is not hashable
        return None
    if len(cache) >= FRAMES_PER_RENDERER:
        cache.clear()
    frames: list[Frame] = []
    for template, escaped in ((text, False), (html, True)):
        rendered = {}
        for tag, stand_ins in zip("ab", _STAND_INS, strict=True):
            trial = dict(variables)
            trial.update({name: stand_ins[index]
                          for index, name in enumerate(PRINTED) if variables[name]})
            rendered[tag] = template.render(trial)
        frame = Frame.parse(rendered["a"], escaped)
        amp = "&amp;" if escaped else "&"
        if frame is None or rendered["b"] != frame.fill(
                [stand_in.replace("&", amp) for stand_in in _STAND_INS[1]]):
            cache[key] = None
            return None
        frames.append(frame)
    cache[key] = (frames[0], frames[1])
    return cache[key]
