"""Render the notice a reinstated user receives, in their language, as ready-to-send bytes.

A notice is a multipart/alternative message (plain text first, then HTML), UTF-8, with a
localised subject. At a million notices the cost is rendering, not the network, so the
MIME bytes are assembled here from a fixed skeleton instead of through
`email.message.EmailMessage` (about ten times slower); the tests parse every shape of
output back with the standard library's strict policy to prove the skeleton is sound.
Likewise each shape of a body (language, plural form, one rule or several, a display
name or none) is rendered by Jinja once and each notice's words are dropped into it
(`_Frame`); the tests compare that with Jinja's own render of random notices.

Safety is by construction rather than by escaping: every header is built from values the
pipeline controls (settings, the incident key, the message id, a validated address), the
subject templates are rendered without any per-notice variables, and what a user wrote
(username, display name) only ever reaches the two bodies, cleaned of control and bidi
characters, and HTML-escaped in the HTML part by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.lists import format_list
from babel.numbers import format_decimal
from jinja2 import meta, nodes

SUPPORTED_LOCALES: tuple[str, ...] = ("en", "es", "fr", "de", "pt", "ja")
DEFAULT_LOCALE = "en"
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "notice"

# The exact header set of every notice, in the order they are written. Tests compare a
# parsed notice against this, so a new header is a deliberate change in two places.
NOTICE_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Auto-Submitted",
    "X-Reinstatement-Reference",
    "Content-Type",
)

# RFC 5322 dot-atom for the local part. Quoted local parts and SMTPUTF8 (non-ASCII local
# parts) are refused: the headers here are 7-bit, and an address that needs either is
# better reported as undeliverable than sent half-right.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MESSAGE_ID_RE = re.compile(rf"<{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*>")
_SCRIPT_SUBTAG_RE = re.compile(r"[a-z]{4}")
_REGION_SUBTAG_RE = re.compile(r"[a-z]{2}|[0-9]{3}")
_SPACE_RUN_RE = re.compile(" {2,}")

# The body variables that are a notice's own words (names, the formatted date and count,
# the reference): the templates print them and decide nothing by them. Every other
# variable decides the notice's shape, and so does whether each of these is empty.
_PRINTED: tuple[str, ...] = (
    "username", "display_name", "rules", "ban_date", "pins_text", "reference")
# Stand-ins for those words while a shape is rendered (see `_Frame`). The "&" shows
# whether the template escaped a word, and private-use characters cannot come from Babel
# or pass into a template's own text unnoticed. The first set numbers the words with
# digits and the second with letters, so that a template that turns one stand-in of the
# first set into another does not do the same to the second.
_STAND_INS = (tuple(f"\ue000&a{index}\ue001" for index in range(len(_PRINTED))),
              tuple(f"\ue000&b{letter}\ue001" for letter in "klmnop"[:len(_PRINTED)]))
_STAND_IN_RE = re.compile("\ue000(&|&amp;)a([0-9])\ue001")
_FRAMES_PER_RENDERER = 4096


def _unsafe_user_characters() -> dict[int, str | None]:
    """Characters that must not survive from user text into a notice body.

    C0/C1 controls (CR and LF among them) and the Unicode line/paragraph separators become
    a space, so "Eve\\r\\nBcc: x" reads as one line. Bidi embeddings, overrides and
    isolates, and the byte-order mark, are removed: U+202E can make a name display
    reversed and disguise what follows it. Zero-width joiners are kept on purpose: emoji
    sequences and several scripts need them.
    """
    table: dict[int, str | None] = dict.fromkeys(range(0x20), " ")
    table.update(dict.fromkeys(range(0x7F, 0xA0), " "))
    table.update({0x2028: " ", 0x2029: " "})
    bidi = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF]
    table.update(dict.fromkeys(bidi, None))
    return table


_UNSAFE_USER_CHARACTERS = _unsafe_user_characters()


def clean_user_text(value: str | None) -> str:
    """User-written text made safe to show as one line: no controls, no bidi tricks."""
    if not value:
        return ""
    # Printable ASCII holds none of the characters the table removes (it is most names,
    # and every reference): the table costs a dictionary lookup a character.
    cleaned = value if value.isascii() and value.isprintable() else value.translate(
        _UNSAFE_USER_CHARACTERS)
    if "  " in cleaned:
        cleaned = _SPACE_RUN_RE.sub(" ", cleaned)
    return cleaned.strip(" ")


def _subtags(tag: str | None) -> list[str]:
    if not tag or not isinstance(tag, str):
        return []
    return [part for part in tag.strip().replace("_", "-").lower().split("-") if part]


def resolve_locale(tag: str | None) -> str:
    """The supported language for a BCP 47 tag: 'pt-BR' -> 'pt', 'ko' -> 'en', junk -> 'en'."""
    parts = _subtags(tag)
    if parts and parts[0] in SUPPORTED_LOCALES:
        return parts[0]
    return DEFAULT_LOCALE


@lru_cache(maxsize=1024)
def babel_locale_for(tag: str | None) -> tuple[str, Locale]:
    """The resolved language and the most specific Babel locale of that language for `tag`.

    'pt-BR' -> ('pt', pt_BR) and 'en-GB' -> ('en', en_GB), so dates read the way the user
    is used to; a region Babel does not know, or a tag whose language we have no text for
    ('ko-KR'), falls back to the resolved language, so the date never switches language
    mid-sentence.
    """
    language = resolve_locale(tag)
    parts = _subtags(tag)
    if not parts or parts[0] != language:
        # 'ko-KR' resolved to English: plain English formats, not a guessed en_KR.
        return language, Locale.parse(language)
    parts = parts[1:]
    script = region = None
    for part in parts:
        # Subtags come in a fixed order (script, then region); anything else (variants,
        # extensions such as -u-ca-gregory) says nothing about date formats we support.
        if script is None and region is None and _SCRIPT_SUBTAG_RE.fullmatch(part):
            script = part.title()
        elif region is None and _REGION_SUBTAG_RE.fullmatch(part):
            region = part.upper()
        else:
            break
    candidates = []
    if script and region:
        candidates.append(f"{language}_{script}_{region}")
    if region:
        candidates.append(f"{language}_{region}")
    for identifier in candidates:
        try:
            return language, Locale.parse(identifier)
        except (ValueError, UnknownLocaleError):
            continue
    return language, Locale.parse(language)


def message_id_for(incident_key: str, account_id: int, domain: str) -> str:
    """The notice's Message-ID: the same incident and account always give the same id.

    Deterministic so that a notice re-sent after a crash carries the same id, which lets
    receiving systems and support see it as one message.
    """
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError("message id domain must be an ASCII host name")
    digest = hashlib.sha256(f"{incident_key}\0{account_id}".encode()).hexdigest()[:32]
    return f"<reinstatement.{digest}@{domain.lower()}>"


def _ascii_domain(domain: str) -> str:
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("domain is not a valid internationalised host name") from None
    if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError("domain is not a valid host name")
    return domain.lower()


def normalise_recipient(address: str) -> str:
    """The recipient as one bare addr-spec (ASCII domain), or ValueError.

    The value becomes the To header and the SMTP envelope recipient, so anything that could
    add a header or a command (a line break) or smuggle a second address is refused.
    """
    if not isinstance(address, str):
        raise ValueError("recipient address must be a string")
    if "\r" in address or "\n" in address:
        raise ValueError("recipient address contains a line break")
    candidate = address.strip(" \t")
    local, at, domain = candidate.rpartition("@")
    if not at or not local or len(local) > 64 or not _LOCAL_PART_RE.fullmatch(local):
        raise ValueError("recipient is not a single valid email address")
    normalised = f"{local}@{_ascii_domain(domain)}"
    if len(normalised) > 254:
        raise ValueError("recipient address is too long")
    return normalised


def sender_domain(email_from: str) -> str:
    """The domain of the From address: "Trust & Safety <t@example.com>" -> "example.com"."""
    _, address = parseaddr(email_from)
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise ValueError("the sender has no email address")
    return _ascii_domain(domain)


@lru_cache(maxsize=16)
def _from_header(email_from: str) -> bytes:
    if "\r" in email_from or "\n" in email_from:
        raise ValueError("sender must be one line")
    name, address = parseaddr(email_from)
    address = normalise_recipient(address)
    # formataddr quotes specials and RFC 2047-encodes a non-ASCII display name.
    return formataddr((name, address), charset="utf-8").encode("ascii")


def _encode_header_text(value: str, header_name: str) -> bytes:
    """An unstructured header value, RFC 2047-encoded and folded only when it must be."""
    if value.isascii() and value.isprintable() and len(value) + len(header_name) < 76:
        return value.encode("ascii")
    return Header(value, "utf-8", header_name=header_name).encode(linesep="\r\n").encode("ascii")


def _encode_body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body) for UTF-8 text, 7-bit safe, CRLF lines.

    Like the standard library, pick whichever of quoted-printable and base64 is shorter:
    quoted-printable keeps Latin-script notices readable in the file backend's .eml files,
    base64 keeps Japanese ones a third of the size.
    """
    raw = text.encode("utf-8", "replace")
    return _shorter_encoding(raw, binascii.b2a_qp(raw, istext=True))


def _shorter_encoding(raw: bytes, qp: bytes) -> tuple[bytes, bytes]:
    """`_encode_body`'s choice, given the text's UTF-8 and its quoted-printable form."""
    base64_size = (len(raw) + 2) // 3 * 4 * 77 // 76 + 2
    if len(qp) <= base64_size:
        return b"quoted-printable", qp.replace(b"\n", b"\r\n")
    # RFC 2045: base64 text is encoded in canonical form, that is with CRLF line breaks.
    canonical = raw.replace(b"\n", b"\r\n")
    return b"base64", base64.encodebytes(canonical).replace(b"\n", b"\r\n")


@dataclass(frozen=True, slots=True)
class NoticeContext:
    """Everything one notice says, as the pipeline knows it."""

    incident_key: str
    case_id: int
    account_id: int
    username: str
    display_name: str | None
    recipient: str
    locale: str  # the account's raw BCP 47 tag; resolved by the renderer
    rule_names: tuple[str, ...]  # rules whose faulty versions banned the account
    ban_date: datetime  # the earliest wrongful ban; tz-aware (naive is read as UTC)
    pins_restored: int
    message_id: str
    sender: str  # settings.email_from

    @property
    def support_reference(self) -> str:
        """What support staff look the case up by."""
        return f"{self.incident_key}/{self.case_id}"


@dataclass(frozen=True, slots=True)
class NoticeContent:
    """A rendered notice before MIME assembly: useful for previews and tests."""

    language: str
    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class _LocaleTemplates:
    subject: str
    subject_header: bytes
    text: jinja2.Template
    html: jinja2.Template
    framed: bool  # both bodies only print the words in _PRINTED (see `_prints_only`)
    # The other variables the bodies read: with which words are empty, they decide a
    # body's shape. Those the templates never read (the exact pin count, say) do not, so
    # a long tail of pin counts does not make a frame each.
    shape: tuple[str, ...]


_Line = tuple[str | int, ...]  # one line of a body with a word in it: text and slots


@dataclass(frozen=True, slots=True)
class _Lines:
    """Whole lines of a frame with no word in them, in UTF-8 and in quoted-printable."""

    raw: bytes
    qp: bytes


@dataclass(frozen=True, slots=True)
class _Frame:
    """One shape of a rendered body: its fixed text, and which word goes between each part.

    Jinja took 23 to 29 us a body (measured alone); filling a frame takes 5 to 8, most of
    it escaping the words for HTML (a join: str.format took three times as long). A frame
    is made by rendering the template itself (`NoticeRenderer._frames`), so what a notice
    reads is Jinja's output, character for character.

    `lines` is the same body for the wire, a line at a time: quoted-printable encodes
    each line on its own (its soft breaks and escapes depend on that line only), so the
    lines without a word are encoded once, here, and only the few with one per notice.
    """

    parts: tuple[str, ...]  # one more than slots
    slots: tuple[int, ...]  # indexes into _PRINTED
    # The body with its line ends made LF and a last LF added (`_normalise_newlines`):
    # runs of whole lines without a word, and single lines with one (text and slots).
    lines: tuple[_Lines | _Line, ...]

    @classmethod
    def parse(cls, rendered: str, escaped: bool) -> _Frame | None:
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
        """`_encode_body(_normalise_newlines(self.fill(words)))`, for words that hold no
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
        return _shorter_encoding(b"".join(raw), b"".join(qp))


def _lines(parts: Sequence[str], slots: Sequence[int]) -> tuple[_Lines | _Line, ...]:
    """A frame's body a line at a time (see `_Frame.lines`). A word holds no line end, so
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
    """A notice's words in _PRINTED's order, as they are and HTML-escaped as Jinja's
    autoescape writes them."""
    words = [variables[name] or "" for name in _PRINTED]
    return words, [str(markupsafe.escape(word)) for word in words]


def _prints_only(environment: jinja2.Environment, name: str, seen: set[str],
                 reads: set[str]) -> bool:
    """Whether template `name`, and every template it extends or includes, uses the words
    in _PRINTED only to print them: `{{ word }}` or `{{ word or other_word }}`, nothing
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
    if any(node.name in _PRINTED and id(node) not in printed
           for node in tree.find_all(nodes.Name)):
        return False
    referenced = list(meta.find_referenced_templates(tree))
    return all(ref is not None and _prints_only(environment, ref, seen, reads)
               for ref in referenced)


class NoticeRenderer:
    """Renders notices; build one per process and reuse it (templates compile once).

    `render_bytes` is the fast path and the wire form the backends send. `render` returns
    the same bytes parsed into an `EmailMessage`, for callers that want to inspect one.
    """

    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir or DEFAULT_TEMPLATES_DIR
        self._environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.templates_dir)),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # Templates ship with the code; checking their mtime on every render is waste.
            auto_reload=False,
        )
        # Load every language up front so a missing or broken template stops the run
        # before the first notice, not at the first Japanese account.
        self._templates = {language: self._load(language) for language in SUPPORTED_LOCALES}
        self._frame_cache: dict[tuple[Any, ...], tuple[_Frame, _Frame] | None] = {}

    def _load(self, language: str) -> _LocaleTemplates:
        # The subject is rendered once and with no variables: nothing per notice, and above
        # all nothing a user wrote, can reach a header through it.
        subject = " ".join(
            self._environment.get_template(f"{language}/subject.txt").render().split()
        )
        if not subject:
            raise ValueError(f"empty subject template for {language!r}")
        reads: set[str] = set()
        framed = all(_prints_only(self._environment, f"{language}/body.{kind}", set(), reads)
                     for kind in ("txt", "html"))
        return _LocaleTemplates(
            subject=subject,
            subject_header=_encode_header_text(subject, "Subject"),
            text=self._environment.get_template(f"{language}/body.txt"),
            html=self._environment.get_template(f"{language}/body.html"),
            framed=framed,
            shape=tuple(sorted(reads - set(_PRINTED))),
        )

    def _variables(self, ctx: NoticeContext, language: str, locale: Locale) -> dict[str, Any]:
        rule_names = tuple(dict.fromkeys(clean_user_text(name) for name in ctx.rule_names if name))
        if not rule_names:
            raise ValueError("a notice must name at least one rule")
        if ctx.pins_restored < 0:
            raise ValueError("pins_restored cannot be negative")
        ban_day = _utc_date(ctx.ban_date)
        pins = ctx.pins_restored
        pins_text, pin_form = _pin_words(pins, locale)
        return {
            "lang": language,
            "subject": self._templates[language].subject,
            "username": clean_user_text(ctx.username),
            "display_name": clean_user_text(ctx.display_name) or None,
            "rule_names": rule_names,
            "rule_count": len(rule_names),
            "rules": _format_rules(rule_names, locale),
            "ban_date": _format_ban_date(ban_day, locale),
            "pins": pins,
            "pins_text": pins_text,
            "pin_form": pin_form,
            "reference": clean_user_text(ctx.support_reference),
        }

    def render_content(self, ctx: NoticeContext) -> NoticeContent:
        """Subject, plain text and HTML of one notice, in the account's language."""
        language, templates, variables, frames = self._prepare(ctx)
        return self._content(language, templates, variables, frames)

    def _prepare(self, ctx: NoticeContext) -> tuple[
            str, _LocaleTemplates, dict[str, Any], tuple[_Frame, _Frame] | None]:
        language, locale = babel_locale_for(ctx.locale)
        templates = self._templates[language]
        variables = self._variables(ctx, language, locale)
        frames = self._frames(language, templates, variables) if templates.framed else None
        return language, templates, variables, frames

    def _content(self, language: str, templates: _LocaleTemplates, variables: dict[str, Any],
                 frames: tuple[_Frame, _Frame] | None) -> NoticeContent:
        if frames is None:
            text, html = templates.text.render(variables), templates.html.render(variables)
        else:
            words, escaped = _words(variables)
            text, html = frames[0].fill(words), frames[1].fill(escaped)
        return NoticeContent(language=language, subject=templates.subject,
                             text=_normalise_newlines(text), html=_normalise_newlines(html))

    def _encoded_bodies(self, ctx: NoticeContext) -> tuple[
            str, tuple[bytes, bytes], tuple[bytes, bytes]]:
        """The language, and each body's (Content-Transfer-Encoding, encoded body)."""
        language, templates, variables, frames = self._prepare(ctx)
        if frames is not None:
            words, escaped = _words(variables)
            if not any("\r" in word or "\n" in word for word in words):
                return language, frames[0].encode(words), frames[1].encode(escaped)
        content = self._content(language, templates, variables, frames)
        return language, _encode_body(content.text), _encode_body(content.html)

    def _frames(self, language: str, templates: _LocaleTemplates,
                variables: dict[str, Any]) -> tuple[_Frame, _Frame] | None:
        """The text and HTML frames of this notice's shape, rendered once per shape.

        The shape is every variable the bodies read but the words (`_LocaleTemplates.shape`),
        and which words are empty (and how: None or ""). The frame is Jinja's own output
        for stand-in words, checked twice: every stand-in must come out whole, escaped
        exactly where Jinja escapes, and a second set of stand-ins dropped into the frame
        must give what Jinja renders for it. A shape that fails either check is rendered
        by Jinja every time (None).
        """
        key = (language, *[variables[name] for name in templates.shape],
               *[True if variables[name] else variables[name] for name in _PRINTED])
        try:
            return self._frame_cache[key]
        except KeyError:
            pass
        except TypeError:  # a variable the templates read that is not hashable
            return None
        if len(self._frame_cache) >= _FRAMES_PER_RENDERER:
            self._frame_cache.clear()
        frames: list[_Frame] = []
        for template, escaped in ((templates.text, False), (templates.html, True)):
            rendered = {}
            for tag, stand_ins in zip("ab", _STAND_INS, strict=True):
                trial = dict(variables)
                trial.update({name: stand_ins[index]
                              for index, name in enumerate(_PRINTED) if variables[name]})
                rendered[tag] = template.render(trial)
            frame = _Frame.parse(rendered["a"], escaped)
            amp = "&amp;" if escaped else "&"
            if frame is None or rendered["b"] != frame.fill(
                    [stand_in.replace("&", amp) for stand_in in _STAND_INS[1]]):
                self._frame_cache[key] = None
                return None
            frames.append(frame)
        self._frame_cache[key] = (frames[0], frames[1])
        return self._frame_cache[key]

    def render_bytes(self, ctx: NoticeContext, *, now: datetime | None = None) -> bytes:
        """The notice on the wire: RFC 5322, 7-bit, CRLF line endings, ready for SMTP DATA.

        Raises ValueError, before anything is built, for a recipient that is not one valid
        address, a malformed message id or a sender without an address.
        """
        recipient = normalise_recipient(ctx.recipient)
        if not _MESSAGE_ID_RE.fullmatch(ctx.message_id) or len(ctx.message_id) > 250:
            raise ValueError("message id must look like <local@domain> in safe characters")
        reference = ctx.support_reference
        if not reference.isprintable():
            raise ValueError("the incident key must be printable text on one line")
        from_header = _from_header(ctx.sender)
        language, (text_encoding, text_body), (html_encoding, html_body) = (
            self._encoded_bodies(ctx))
        sent_at = now or datetime.now(UTC)
        if sent_at.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        # Derived from the message id so that a re-render is byte-identical apart from
        # Date. "=_" cannot occur in quoted-printable or base64 output, so the boundary
        # can never collide with a body line.
        boundary = b"=_rn_" + hashlib.sha256(ctx.message_id.encode("ascii")).hexdigest()[
            :40
        ].encode("ascii")
        return b"".join(
            (
                b"From: ", from_header, b"\r\n",
                b"To: ", recipient.encode("ascii"), b"\r\n",
                b"Subject: ", self._templates[language].subject_header, b"\r\n",
                b"Date: ", _date_header(math.floor(sent_at.timestamp())), b"\r\n",
                b"Message-ID: ", ctx.message_id.encode("ascii"), b"\r\n",
                b"MIME-Version: 1.0\r\n",
                b"Auto-Submitted: auto-generated\r\n",
                b"X-Reinstatement-Reference: ",
                _encode_header_text(reference, "X-Reinstatement-Reference"), b"\r\n",
                # Folded so that every header line stays within RFC 5322's 78 characters.
                b'Content-Type: multipart/alternative;\r\n boundary="', boundary, b'"\r\n',
                b"\r\n",
                b"--", boundary, b"\r\n",
                b"Content-Type: text/plain; charset=utf-8\r\n",
                b"Content-Transfer-Encoding: ", text_encoding, b"\r\n",
                b"\r\n",
                text_body,
                b"--", boundary, b"\r\n",
                b"Content-Type: text/html; charset=utf-8\r\n",
                b"Content-Transfer-Encoding: ", html_encoding, b"\r\n",
                b"\r\n",
                html_body,
                b"--", boundary, b"--\r\n",
            )
        )  # fmt: skip

    def render(self, ctx: NoticeContext, *, now: datetime | None = None) -> EmailMessage:
        """The same notice as `render_bytes`, parsed into an `EmailMessage` (slow path)."""
        message = email.message_from_bytes(
            self.render_bytes(ctx, now=now), policy=email.policy.default
        )
        assert isinstance(message, EmailMessage)  # guaranteed by policy.default
        return message


def _normalise_newlines(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _utc_date(moment: datetime) -> date:
    # The user's time zone is unknown, so the ban's date is its UTC date, the same date
    # support sees in the database. SQLite hands timestamps back naive: they are UTC.
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


@lru_cache(maxsize=4096)
def _pin_words(pins: int, locale: Locale) -> tuple[str, str]:
    """The count as the locale writes it, and its plural form. Cached: counts repeat, and
    Babel's number formatting was two fifths of the variables' cost per notice."""
    # 'zero' is ours, not CLDR's: "no pins were hidden" is a different sentence, not a
    # plural form. Otherwise CLDR's category ('one', 'other', 'many').
    return (format_decimal(pins, locale=locale),
            "zero" if pins == 0 else locale.plural_form(pins))


@lru_cache(maxsize=8)
def _date_header(second: int) -> bytes:
    """The Date header's value for a moment, to the second (RFC 5322 has no fractions).
    Cached: a sender writes hundreds of notices a second, and formatting it was 7 us."""
    return format_datetime(datetime.fromtimestamp(second, UTC)).encode("ascii")


@lru_cache(maxsize=4096)
def _format_rules(rule_names: tuple[str, ...], locale: Locale) -> str:
    # Cached: an incident's notices name the same few rules.
    return format_list(list(rule_names), locale=locale)


@lru_cache(maxsize=4096)
def _format_ban_date(day: date, locale: Locale) -> str:
    # Cached: an incident's bans cluster on a few days, and Babel's formatting is the
    # single biggest cost of a render after Jinja itself.
    text = format_date(day, format="long", locale=locale)
    if locale.language == "fr" and day.day == 1 and text.startswith("1 "):
        # French writes the first of the month as an ordinal ("1er avril"); CLDR does not.
        text = "1er" + text[1:]
    return text
