"""Render the notice a reinstated user receives, in their language, as ready-to-send bytes.

A notice is a multipart/alternative message (plain text first, then HTML), UTF-8, with a
localised subject. At a million notices the cost is rendering, not the network, so the
MIME bytes are assembled here from a fixed skeleton instead of through
`email.message.EmailMessage`, which costs several times as much (bench/RESULTS.md); the
tests parse every shape of output back with the standard library's strict policy to
prove the skeleton is sound. Header values and bodies are encoded by mime.py.

The bodies come from Jinja: here, plainly, `template.render` for each notice. The fast
path beside it (render_frames.py) renders each shape of a body once and drops each
notice's words into it; `NoticeRenderer(frames=False)` renders every notice the plain
way, and the tests compare the two byte for byte.

Safety is by construction rather than by escaping: every header is built from values the
pipeline controls (settings, the incident key, the message id, a validated address), the
subject templates are rendered without any per-notice variables, and what a user wrote
(username, display name) only ever reaches the two bodies, cleaned of control and bidi
characters, and HTML-escaped in the HTML part by Jinja2's autoescape.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import formataddr, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.lists import format_list
from babel.numbers import format_decimal

from reinstatement.notices.addresses import (
    MESSAGE_ID_RE,
    message_id_for,
    normalise_recipient,
    sender_domain,
)
from reinstatement.notices.mime import (
    date_header,
    encode_body,
    encode_header_text,
    normalise_newlines,
)
from reinstatement.notices.render_frames import (
    Frames,
    encode_frames,
    fill_frames,
    frameable,
    frames_for,
)

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
# The address rules live in addresses.py; these names are imported from here as well.
__all__ = [
    "DEFAULT_LOCALE",
    "NOTICE_HEADERS",
    "SUPPORTED_LOCALES",
    "NoticeContent",
    "NoticeContext",
    "NoticeRenderer",
    "babel_locale_for",
    "clean_user_text",
    "message_id_for",
    "normalise_recipient",
    "resolve_locale",
    "sender_domain",
]

_SCRIPT_SUBTAG_RE = re.compile(r"[a-z]{4}")
_REGION_SUBTAG_RE = re.compile(r"[a-z]{2}|[0-9]{3}")
_SPACE_RUN_RE = re.compile(" {2,}")


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


@lru_cache(maxsize=16)
def _from_header(email_from: str) -> bytes:
    if "\r" in email_from or "\n" in email_from:
        raise ValueError("sender must be one line")
    name, address = parseaddr(email_from)
    address = normalise_recipient(address)
    # formataddr quotes specials and RFC 2047-encodes a non-ASCII display name.
    return formataddr((name, address), charset="utf-8").encode("ascii")


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
    # Both bodies are filled from frames (frameable), and the variables
    # besides the words that decide a frame's shape.
    framed: bool
    shape: tuple[str, ...]


class NoticeRenderer:
    """Renders notices; build one per process and reuse it (templates compile once).

    `render_bytes` is the wire form the backends send. `render` returns the same bytes
    parsed into an `EmailMessage`, for callers that want to inspect one. `frames=False`:
    every body rendered by Jinja (`template.render`), none filled from a frame; the same
    bytes, more slowly.
    """

    def __init__(self, templates_dir: Path | None = None, *, frames: bool = True) -> None:
        self.templates_dir = templates_dir or DEFAULT_TEMPLATES_DIR
        self.frames = frames
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
        self._frame_cache: dict[tuple[Any, ...], Frames | None] = {}

    def _load(self, language: str) -> _LocaleTemplates:
        # The subject is rendered once and with no variables: nothing per notice, and above
        # all nothing a user wrote, can reach a header through it.
        subject = " ".join(
            self._environment.get_template(f"{language}/subject.txt").render().split()
        )
        if not subject:
            raise ValueError(f"empty subject template for {language!r}")
        framed, shape = (frameable(self._environment, language)
                         if self.frames else (False, ()))
        return _LocaleTemplates(
            subject=subject,
            subject_header=encode_header_text(subject, "Subject"),
            text=self._environment.get_template(f"{language}/body.txt"),
            html=self._environment.get_template(f"{language}/body.html"),
            framed=framed,
            shape=shape,
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
            str, _LocaleTemplates, dict[str, Any], Frames | None]:
        """The notice's language, its templates and variables, and its shape's frames
        (None: its bodies are rendered the plain way)."""
        language, locale = babel_locale_for(ctx.locale)
        templates = self._templates[language]
        variables = self._variables(ctx, language, locale)
        frames = frames_for(
            self._frame_cache, language, templates.text, templates.html, templates.shape,
            variables) if templates.framed else None
        return language, templates, variables, frames

    def _content(self, language: str, templates: _LocaleTemplates, variables: dict[str, Any],
                 frames: Frames | None) -> NoticeContent:
        if frames is None:
            # The plain path: Jinja renders both bodies of this notice.
            text, html = templates.text.render(variables), templates.html.render(variables)
        else:
            text, html = fill_frames(frames, variables)
        return NoticeContent(language=language, subject=templates.subject,
                             text=normalise_newlines(text), html=normalise_newlines(html))

    def _encoded_bodies(self, ctx: NoticeContext) -> tuple[
            str, tuple[bytes, bytes], tuple[bytes, bytes]]:
        """The language, and each body's (Content-Transfer-Encoding, encoded body)."""
        language, templates, variables, frames = self._prepare(ctx)
        if frames is not None:
            bodies = encode_frames(frames, variables)
            if bodies is not None:
                return language, *bodies
        content = self._content(language, templates, variables, frames)
        return language, encode_body(content.text), encode_body(content.html)

    def render_bytes(self, ctx: NoticeContext, *, now: datetime | None = None) -> bytes:
        """The notice on the wire: RFC 5322, 7-bit, CRLF line endings, ready for SMTP DATA.

        Raises ValueError, before anything is built, for a recipient that is not one valid
        address, a malformed message id or a sender without an address.
        """
        recipient = normalise_recipient(ctx.recipient)
        if not MESSAGE_ID_RE.fullmatch(ctx.message_id) or len(ctx.message_id) > 250:
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
                b"Date: ", date_header(math.floor(sent_at.timestamp())), b"\r\n",
                b"Message-ID: ", ctx.message_id.encode("ascii"), b"\r\n",
                b"MIME-Version: 1.0\r\n",
                b"Auto-Submitted: auto-generated\r\n",
                b"X-Reinstatement-Reference: ",
                encode_header_text(reference, "X-Reinstatement-Reference"), b"\r\n",
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


def _utc_date(moment: datetime) -> date:
    # The user's time zone is unknown, so the ban's date is its UTC date, the same date
    # support sees in the database. SQLite hands timestamps back naive: they are UTC.
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


@lru_cache(maxsize=4096)
def _pin_words(pins: int, locale: Locale) -> tuple[str, str]:
    """The count as the locale writes it, and its plural form. Cached: counts repeat, and
    Babel's number formatting is a large part of the variables' cost."""
    # 'zero' is ours, not CLDR's: "no pins were hidden" is a different sentence, not a
    # plural form. Otherwise CLDR's category ('one', 'other', 'many').
    return (format_decimal(pins, locale=locale),
            "zero" if pins == 0 else locale.plural_form(pins))


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
