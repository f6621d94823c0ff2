"""Tests for notice rendering: content in every language, fallbacks, and header safety.

Every rendered notice is parsed back with the standard library's strict policy and must
come out with exactly the expected headers, two parts and no parser defects: the
renderer assembles MIME by hand for speed, and these tests are what make that safe.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from reinstatement.notices.render import (
    NOTICE_HEADERS,
    SUPPORTED_LOCALES,
    NoticeContext,
    NoticeRenderer,
    babel_locale_for,
    clean_user_text,
    message_id_for,
    normalise_recipient,
    resolve_locale,
    sender_domain,
)

SENDER = "Trust & Safety <trust-and-safety@example.com>"
NOW = datetime(2025, 5, 2, 8, 30, tzinfo=UTC)
BAN_DATE = datetime(2025, 4, 15, 9, 30, tzinfo=UTC)
INCIDENT = "INC-2025-04-spam"


@pytest.fixture(scope="module")
def renderer() -> NoticeRenderer:
    return NoticeRenderer()


def make_context(**changes: object) -> NoticeContext:
    """A notice for one reinstated account; keyword arguments override any field."""
    account_id = int(changes.pop("account_id", 42))  # type: ignore[call-overload]
    base = NoticeContext(
        incident_key=INCIDENT,
        case_id=7,
        account_id=account_id,
        username="zoe_m",
        display_name="Zoë Martin",
        recipient="zoe@example.com",
        locale="en",
        rule_names=("spam_burst",),
        ban_date=BAN_DATE,
        pins_restored=12,
        message_id=message_id_for(INCIDENT, account_id, "example.com"),
        sender=SENDER,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    """Parse wire bytes strictly and fail on any defect, in the message, a part or a header."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    for name, value in message.items():
        assert getattr(value, "defects", ()) == (), (name, value.defects)
    for part in message.iter_parts():
        assert part.defects == []
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value.defects)
    return message


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def bodies(message: EmailMessage) -> tuple[str, str]:
    """(plain text, HTML) of a notice, checking the multipart/alternative structure."""
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    text, html = (part.get_content() for part in parts)
    assert isinstance(text, str) and isinstance(html, str)
    return text, html


def assert_expected_headers(message: EmailMessage, ctx: NoticeContext, subject: str) -> None:
    assert [name for name, _ in message.items()] == list(NOTICE_HEADERS)
    assert {name: str(value) for name, value in message.items() if name != "Content-Type"} == {
        "From": SENDER,
        "To": ctx.recipient,
        "Subject": subject,
        "Date": format_datetime(NOW),
        "Message-ID": ctx.message_id,
        "MIME-Version": "1.0",
        "Auto-Submitted": "auto-generated",
        "X-Reinstatement-Reference": ctx.support_reference,
    }
    assert message.get_content_type() == "multipart/alternative"


# -- every language ------------------------------------------------------------------------

LOCALE_CASES = {
    "en": {
        "subject": "Your account has been restored",
        "greeting": "Hello Zoë Martin,",
        "mistake": "The ban was a mistake, and we have lifted it.",
        "date": "April 15, 2025",
        "rule": "by an automated rule (spam_burst)",
        "rules": "by automated rules (spam_burst and image_hash)",
        "pins": "restored 12 pins",
        "one_pin": "restored 1 pin that",
        "no_pins": "did not hide any of your pins",
        "apology": "We’re sorry for the trouble this has caused.",
    },
    "es": {
        "subject": "Hemos restablecido tu cuenta",
        "greeting": "Hola, Zoë Martin:",
        "mistake": "Esa suspensión fue un error y ya la hemos levantado.",
        "date": "15 de abril de 2025",
        "rule": "una regla automática (spam_burst)",
        "rules": "unas reglas automáticas (spam_burst y image_hash)",
        "pins": "restaurado 12 pines",
        "one_pin": "restaurado 1 pin que",
        "no_pins": "no ocultó ninguno de tus pines",
        "apology": "Sentimos mucho las molestias",
    },
    "fr": {
        "subject": "Votre compte a été rétabli",
        "greeting": "Bonjour Zoë Martin,",
        "mistake": "Cette suspension était une erreur et nous l’avons levée.",
        "date": "15 avril 2025",
        "rule": "par une règle automatique (spam_burst)",
        "rules": "par des règles automatiques (spam_burst et image_hash)",
        "pins": "rétabli 12 épingles",
        "one_pin": "rétabli 1 épingle que la suspension avait masquée",
        "no_pins": "aucune de vos épingles",
        "apology": "Nous vous prions de nous excuser",
    },
    "de": {
        "subject": "Ihr Konto ist wieder freigeschaltet",
        "greeting": "Hallo Zoë Martin,",
        "mistake": "Diese Sperre war ein Fehler, und wir haben sie aufgehoben.",
        "date": "15. April 2025",
        "rule": "von einer automatischen Regel (spam_burst)",
        "rules": "von automatischen Regeln (spam_burst und image_hash)",
        "pins": "haben wir 12 Pins wiederhergestellt",
        "one_pin": "haben wir 1 Pin wiederhergestellt, der",
        "no_pins": "keine Ihrer Pins ausgeblendet",
        "apology": "Bitte entschuldigen Sie die Unannehmlichkeiten",
    },
    "pt": {
        "subject": "Sua conta foi restabelecida",
        "greeting": "Olá, Zoë Martin,",
        "mistake": "Essa suspensão foi um erro e já foi revertida.",
        "date": "15 de abril de 2025",
        "rule": "por uma regra automática (spam_burst)",
        "rules": "por regras automáticas (spam_burst e image_hash)",
        "pins": "restauramos 12 pins",
        "one_pin": "restauramos 1 pin que",
        "no_pins": "nenhum dos seus pins",
        "apology": "Pedimos desculpas",
    },
    "ja": {
        "subject": "アカウントの停止を解除しました",
        "greeting": "Zoë Martin 様",
        "mistake": "この停止は誤りによるものでしたので、すでに解除いたしました。",
        "date": "2025年4月15日",
        "rule": "自動ルール（spam_burst）",
        "rules": "自動ルール（spam_burst、image_hash）",
        "pins": "ピン12件",
        "one_pin": "ピン1件",
        "no_pins": "非表示になったピンはなかった",
        "apology": "誠に申し訳ございませんでした",
    },
}


def test_every_supported_locale_has_a_case() -> None:
    assert set(LOCALE_CASES) == set(SUPPORTED_LOCALES)


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_notice_in_each_language(renderer: NoticeRenderer, locale: str) -> None:
    case = LOCALE_CASES[locale]
    ctx = make_context(locale=locale)
    data = renderer.render_bytes(ctx, now=NOW)
    message = parse(data)
    assert_expected_headers(message, ctx, case["subject"])
    text, html = bodies(message)
    for body in (text, html):
        for key in ("mistake", "date", "rule", "pins", "apology"):
            assert case[key] in body, (locale, key)
        assert "@zoe_m" in body
        assert "Zoë Martin" in body
        assert "INC-2025-04-spam/7" in body
    assert case["greeting"] in text
    assert f'<html lang="{locale}"' in html
    assert "<bdi>Zoë Martin</bdi>" in html


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_several_rules_are_listed_in_the_language(renderer: NoticeRenderer, locale: str) -> None:
    ctx = make_context(locale=locale, rule_names=("spam_burst", "image_hash", "spam_burst"))
    text = renderer.render_content(ctx).text
    assert LOCALE_CASES[locale]["rules"] in text
    assert text.count("spam_burst") == 1


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
@pytest.mark.parametrize(("pins", "key"), [(0, "no_pins"), (1, "one_pin"), (12, "pins")])
def test_pin_counts_use_the_right_form(
    renderer: NoticeRenderer, locale: str, pins: int, key: str
) -> None:
    content = renderer.render_content(make_context(locale=locale, pins_restored=pins))
    assert LOCALE_CASES[locale][key] in content.text
    assert LOCALE_CASES[locale][key] in content.html


def test_no_pins_is_not_phrased_as_a_count(renderer: NoticeRenderer) -> None:
    text = renderer.render_content(make_context(pins_restored=0)).text
    assert "0 pin" not in text


@pytest.mark.parametrize(
    ("locale", "expected"),
    [("en", ["1,234 pins"]), ("de", ["1.234 Pins"]),
     # Swiss grouping: CLDR spelt it with U+2019 until Babel 2.18, with an apostrophe since.
     ("de-CH", ["1’234 Pins", "1'234 Pins"]), ("ja", ["ピン1,234件"])],
)
def test_large_pin_counts_are_formatted_for_the_locale(
    renderer: NoticeRenderer, locale: str, expected: list[str]
) -> None:
    text = renderer.render_content(make_context(locale=locale, pins_restored=1234)).text
    assert any(spelling in text for spelling in expected), text


@pytest.mark.parametrize(
    ("tag", "expected_date"),
    [
        ("en", "April 15, 2025"),
        ("en-US", "April 15, 2025"),
        ("en-GB", "15 April 2025"),
        ("en_gb", "15 April 2025"),
        ("pt-BR", "15 de abril de 2025"),
        ("pt-PT", "15 de abril de 2025"),
        ("de-AT", "15. April 2025"),
        ("ja-JP", "2025年4月15日"),
        ("ko-KR", "April 15, 2025"),
    ],
)
def test_ban_date_follows_the_users_full_tag(
    renderer: NoticeRenderer, tag: str, expected_date: str
) -> None:
    assert expected_date in renderer.render_content(make_context(locale=tag)).text


def test_ban_date_is_the_utc_date(renderer: NoticeRenderer) -> None:
    late_in_new_york = datetime(2025, 4, 15, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    text = renderer.render_content(make_context(ban_date=late_in_new_york)).text
    assert "April 16, 2025" in text
    naive_from_sqlite = datetime(2025, 4, 15, 23, 30)
    text = renderer.render_content(make_context(ban_date=naive_from_sqlite)).text
    assert "April 15, 2025" in text


def test_french_first_of_the_month_is_an_ordinal(renderer: NoticeRenderer) -> None:
    ctx = make_context(locale="fr", ban_date=datetime(2025, 4, 1, tzinfo=UTC))
    assert "Le 1er avril 2025," in renderer.render_content(ctx).text


def test_account_without_display_name_is_greeted_by_username(renderer: NoticeRenderer) -> None:
    content = renderer.render_content(make_context(display_name=None))
    assert content.text.startswith("Hello zoe_m,")
    blank = renderer.render_content(make_context(display_name=" \r\n\u202e "))
    assert blank.text.startswith("Hello zoe_m,")


# -- locale resolution --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("pt-BR", "pt"),
        ("en-GB", "en"),
        ("es-MX", "es"),
        ("ko", "en"),
        ("zz-Latn-XX", "en"),
        ("", "en"),
        (None, "en"),
        ("PT_br", "pt"),
        ("FR-ca", "fr"),
        ("ja-JP", "ja"),
        ("de-CH-1996", "de"),
        ("en-US-u-ca-gregory", "en"),
        ("x-private", "en"),
        ("english", "en"),
        ("!!", "en"),
        ("  es  ", "es"),
    ],
)
def test_resolve_locale(tag: str | None, expected: str) -> None:
    assert resolve_locale(tag) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("pt-BR", "pt_BR"),
        ("en-GB", "en_GB"),
        ("es-MX", "es_MX"),
        ("ko-KR", "en"),
        ("de-XX", "de"),
        ("en-US-u-ca-gregory", "en_US"),
        ("zz-Latn-XX", "en"),
        (None, "en"),
    ],
)
def test_babel_locale_prefers_the_full_tag_of_the_same_language(
    tag: str | None, expected: str
) -> None:
    assert str(babel_locale_for(tag)[1]) == expected


@pytest.mark.parametrize(
    ("tag", "subject"),
    [
        ("pt-BR", LOCALE_CASES["pt"]["subject"]),
        ("en-GB", LOCALE_CASES["en"]["subject"]),
        ("es-MX", LOCALE_CASES["es"]["subject"]),
        ("ko", LOCALE_CASES["en"]["subject"]),
        ("zz-Latn-XX", LOCALE_CASES["en"]["subject"]),
        ("", LOCALE_CASES["en"]["subject"]),
    ],
)
def test_unknown_or_regional_locales_fall_back(
    renderer: NoticeRenderer, tag: str, subject: str
) -> None:
    message = parse(renderer.render_bytes(make_context(locale=tag), now=NOW))
    assert str(message["Subject"]) == subject


# -- hostile user text --------------------------------------------------------------------

HOSTILE_NAMES = [
    "Eve\r\nBcc: everyone@example.com",
    "Name\nSubject: hi",
    "Carriage\rReturn: x",
    "<script>alert(1)</script>",
    '<b>x</b> & "q"',
    "Zoë 🌸",
    "\u202eevil",
    "=?utf-8?q?x?=",
    "tab\there\x00nul\x1bescape\u2028line",
    "\r\n\r\nbody injection",
]


@pytest.fixture(scope="module")
def baseline_headers(renderer: NoticeRenderer) -> bytes:
    ctx = make_context(username="plain", display_name=None)
    return header_block(renderer.render_bytes(ctx, now=NOW))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("field", ["display_name", "username"])
def test_user_text_cannot_touch_headers(
    renderer: NoticeRenderer, baseline_headers: bytes, name: str, field: str
) -> None:
    changes: dict[str, object] = {"username": "plain", "display_name": None, field: name}
    ctx = make_context(**changes)
    data = renderer.render_bytes(ctx, now=NOW)
    # Headers do not depend on what the user wrote, byte for byte.
    assert header_block(data) == baseline_headers
    message = parse(data)
    assert_expected_headers(message, ctx, LOCALE_CASES["en"]["subject"])
    head = header_block(data).decode("ascii")
    for fragment in ("everyone", "Bcc", "hi", "script", "evil", "=?utf-8?q?x?=", "injection"):
        assert fragment not in head
    text, html = bodies(message)
    cleaned = clean_user_text(name)
    assert cleaned in text
    assert not re.search(r"^(Bcc|Subject|Return):", text, flags=re.MULTILINE)
    assert str(escape(cleaned)) in html


def test_markup_is_escaped_in_html_and_plain_in_text(renderer: NoticeRenderer) -> None:
    text, html = bodies(
        parse(renderer.render_bytes(make_context(display_name="<script>alert(1)</script>")))
    )
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Hello <script>alert(1)</script>," in text

    text, html = bodies(parse(renderer.render_bytes(make_context(display_name='<b>x</b> & "q"'))))
    assert "<b>x</b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &#34;q&#34;" in html
    assert 'Hello <b>x</b> & "q",' in text


def test_controls_and_bidi_overrides_are_removed_from_names(renderer: NoticeRenderer) -> None:
    ctx = make_context(display_name="\u202eevil\u2066x\u2069", username="eve\r\nadmin")
    text, html = bodies(parse(renderer.render_bytes(ctx)))
    for body in (text, html):
        assert "\u202e" not in body and "\u2066" not in body
        assert "evilx" in body
        assert "@eve admin" in body


def test_emoji_and_non_latin_text_survive(renderer: NoticeRenderer) -> None:
    names = ["Zoë 🌸", "山田　太郎", "Ольга", "محمد", "👩‍👩‍👧 family"]
    for name in names:
        for locale in ("en", "ja"):
            text, html = bodies(
                parse(renderer.render_bytes(make_context(display_name=name, locale=locale)))
            )
            assert name in text and name in html


def test_encoded_word_in_a_name_stays_literal(renderer: NoticeRenderer) -> None:
    message = parse(renderer.render_bytes(make_context(display_name="=?utf-8?q?x?="), now=NOW))
    text, _ = bodies(message)
    assert "Hello =?utf-8?q?x?=," in text
    assert str(message["Subject"]) == LOCALE_CASES["en"]["subject"]


@given(
    display_name=st.one_of(st.none(), st.text(max_size=200)),
    username=st.text(min_size=1, max_size=64),
)
@settings(max_examples=150, deadline=None)
def test_any_user_text_leaves_headers_alone(display_name: str | None, username: str) -> None:
    renderer = _shared_renderer()
    ctx = make_context(display_name=display_name, username=username)
    data = renderer.render_bytes(ctx, now=NOW)
    baseline = renderer.render_bytes(make_context(display_name=None, username="plain"), now=NOW)
    assert header_block(data) == header_block(baseline)
    message = parse(data)
    assert_expected_headers(message, ctx, LOCALE_CASES["en"]["subject"])
    text, html = bodies(message)
    cleaned = clean_user_text(display_name)
    if cleaned:
        assert cleaned in text
        assert str(escape(cleaned)) in html
    assert "\r" not in clean_user_text(username) and "\n" not in clean_user_text(username)


_RENDERER: list[NoticeRenderer] = []


def _shared_renderer() -> NoticeRenderer:
    # Hypothesis does not mix with function-scoped fixtures; build the renderer once.
    if not _RENDERER:
        _RENDERER.append(NoticeRenderer())
    return _RENDERER[0]


# -- recipients, ids, senders -------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [
        "zoe@example.com\r\nBcc: everyone@example.com",
        "zoe@example.com\n",
        "\rzoe@example.com",
        "Zoë <zoe@example.com>",
        "zoe@example.com, eve@example.com",
        "zoe@example.com eve@example.com",
        "",
        "zoe",
        "@example.com",
        "zoe@",
        "zoe@exa mple.com",
        "zo\u00eb@example.com",
        "zoe@@example.com",
        '"zoe"@example.com',
        "zoe@-example.com",
        "zoe..m@example.com",
    ],
)
def test_bad_recipient_is_refused(renderer: NoticeRenderer, recipient: str) -> None:
    with pytest.raises(ValueError):
        renderer.render_bytes(make_context(recipient=recipient))


def test_recipient_is_normalised(renderer: NoticeRenderer) -> None:
    assert normalise_recipient("  zoe@Example.COM ") == "zoe@example.com"
    assert normalise_recipient("zoe@bücher.de") == "zoe@xn--bcher-kva.de"
    message = parse(renderer.render_bytes(make_context(recipient="zoe.m+pins@bücher.de")))
    assert str(message["To"]) == "zoe.m+pins@xn--bcher-kva.de"


def test_message_id_is_deterministic_and_distinct() -> None:
    first = message_id_for(INCIDENT, 42, "example.com")
    assert first == message_id_for(INCIDENT, 42, "example.com")
    digest = hashlib.sha256(f"{INCIDENT}\x0042".encode()).hexdigest()[:32]
    assert first == f"<reinstatement.{digest}@example.com>"
    others = {
        message_id_for(INCIDENT, 43, "example.com"),
        message_id_for("INC-2025-05-other", 42, "example.com"),
        message_id_for(INCIDENT + "4", 2, "example.com"),
    }
    assert first not in others and len(others) == 3
    hostile = message_id_for("key\r\nBcc: x <y>", 1, "example.com")
    assert re.fullmatch(r"<reinstatement\.[0-9a-f]{32}@example\.com>", hostile)
    with pytest.raises(ValueError):
        message_id_for(INCIDENT, 1, "example.com>\r\nBcc: x")


@pytest.mark.parametrize(
    ("email_from", "domain"),
    [
        ("Trust & Safety <t@example.com>", "example.com"),
        ("t@Mail.Example.org", "mail.example.org"),
        ('"Safety, Team" <t@example.net>', "example.net"),
        ("Équipe <t@bücher.de>", "xn--bcher-kva.de"),
    ],
)
def test_sender_domain(email_from: str, domain: str) -> None:
    assert sender_domain(email_from) == domain


@pytest.mark.parametrize("email_from", ["Trust & Safety", "", "<@example.com>"])
def test_sender_without_address_is_refused(email_from: str) -> None:
    with pytest.raises(ValueError):
        sender_domain(email_from)


def test_non_ascii_sender_name_is_encoded(renderer: NoticeRenderer) -> None:
    sender = "Équipe Confiance & Sécurité <t@example.com>"
    message = parse(renderer.render_bytes(make_context(sender=sender)))
    assert str(message["From"]) == sender


@pytest.mark.parametrize(
    "changes",
    [
        {"message_id": "<a\r\nBcc: x@example.com>"},
        {"message_id": "no-brackets@example.com"},
        {"message_id": "<two@at@example.com>"},
        {"incident_key": "INC\r\nBcc: x"},
        {"rule_names": ()},
        {"pins_restored": -1},
        {"sender": "Trust & Safety"},
    ],
)
def test_malformed_context_is_refused(renderer: NoticeRenderer, changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        renderer.render_bytes(make_context(**changes))


# -- the wire form ------------------------------------------------------------------------


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_wire_form_is_7bit_crlf_with_short_lines(renderer: NoticeRenderer, locale: str) -> None:
    data = renderer.render_bytes(make_context(locale=locale, display_name="Zoë 🌸"), now=NOW)
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert data.endswith(b"--\r\n")


def test_same_notice_renders_to_the_same_bytes(renderer: NoticeRenderer) -> None:
    ctx = make_context(locale="de")
    assert renderer.render_bytes(ctx, now=NOW) == renderer.render_bytes(ctx, now=NOW)


def test_render_returns_the_parsed_message(renderer: NoticeRenderer) -> None:
    ctx = make_context(locale="ja")
    message = renderer.render(ctx, now=NOW)
    assert isinstance(message, EmailMessage)
    assert message.as_bytes(policy=email.policy.SMTP) == parse(
        renderer.render_bytes(ctx, now=NOW)
    ).as_bytes(policy=email.policy.SMTP)


def test_date_defaults_to_now_and_must_be_aware(renderer: NoticeRenderer) -> None:
    message = parse(renderer.render_bytes(make_context()))
    sent = message["Date"].datetime
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=1)
    with pytest.raises(ValueError):
        renderer.render_bytes(make_context(), now=datetime(2025, 5, 2, 8, 30))


def test_templates_are_compiled_once(renderer: NoticeRenderer) -> None:
    before = {locale: renderer._templates[locale].text for locale in SUPPORTED_LOCALES}
    for locale in SUPPORTED_LOCALES:
        renderer.render_bytes(make_context(locale=locale))
    assert {locale: renderer._templates[locale].text for locale in SUPPORTED_LOCALES} == before


def test_missing_template_fails_at_construction(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "subject.txt").write_text("Hi\n", encoding="utf-8")
    with pytest.raises(jinja2.TemplateNotFound):
        NoticeRenderer(templates_dir=tmp_path)


def test_custom_templates_dir_with_autoescape(tmp_path: Path) -> None:
    for locale in SUPPORTED_LOCALES:
        folder = tmp_path / locale
        folder.mkdir()
        (folder / "subject.txt").write_text(f"Subject {locale}\n", encoding="utf-8")
        (folder / "body.txt").write_text("{{ display_name }}\n", encoding="utf-8")
        (folder / "body.html").write_text("<p>{{ display_name }}</p>\n", encoding="utf-8")
    custom = NoticeRenderer(templates_dir=tmp_path)
    content = custom.render_content(make_context(display_name="<i>&</i>", locale="fr"))
    assert content.subject == "Subject fr"
    assert content.text == "<i>&</i>\n"
    assert content.html == "<p>&lt;i&gt;&amp;&lt;/i&gt;</p>\n"


# -- frames: each shape of a body rendered by Jinja once, then filled ---------------------


def _jinja_content(renderer: NoticeRenderer, ctx: NoticeContext) -> tuple[str, str]:
    """The two bodies as Jinja renders them, with no frame: the reference."""
    language, locale = babel_locale_for(ctx.locale)
    templates = renderer._templates[language]
    variables = renderer._variables(ctx, language, locale)

    def body(template: jinja2.Template) -> str:
        text = template.render(variables).replace("\r\n", "\n").replace("\r", "\n")
        return text if text.endswith("\n") else text + "\n"

    return body(templates.text), body(templates.html)


# User text with markup, Jinja's own syntax and the frames' stand-ins in it.
_TEXT = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=8),
        st.sampled_from(("<", ">", "&", '"', "'", "\ue000", "\ue001", "{{ x }}", "%}",
                         "\ue000&a0\ue001", "\ue000&amp;b3\ue001", "\r\n", "\u202e")),
    ),
    max_size=6,
).map("".join)


@given(
    locale=st.sampled_from((*SUPPORTED_LOCALES, "en-GB", "pt-BR", "fr-CA", "ko", "")),
    display_name=st.one_of(st.none(), _TEXT),
    username=_TEXT,
    rule_names=st.lists(_TEXT, min_size=1, max_size=3).map(tuple),
    pins=st.one_of(st.integers(0, 3), st.integers(0, 10**9)),
    incident_key=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P"]),
                         min_size=1, max_size=20),
    ban_date=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1),
                          timezones=st.just(UTC)),
)
@settings(max_examples=400, deadline=None)
def test_framed_bodies_are_exactly_what_jinja_renders(
    locale: str, display_name: str | None, username: str, rule_names: tuple[str, ...],
    pins: int, incident_key: str, ban_date: datetime,
) -> None:
    renderer = _shared_renderer()
    rule_names = rule_names if any(clean_user_text(name) for name in rule_names) else ("r",)
    ctx = make_context(locale=locale, display_name=display_name, username=username,
                       rule_names=rule_names, pins_restored=pins,
                       incident_key=incident_key, ban_date=ban_date)
    content = renderer.render_content(ctx)
    assert (content.text, content.html) == _jinja_content(renderer, ctx)
    assert renderer.render_bytes(ctx, now=NOW) == _unframed().render_bytes(ctx, now=NOW)


_UNFRAMED: list[NoticeRenderer] = []


def _unframed() -> NoticeRenderer:
    """A renderer that renders every body with Jinja and encodes it whole: the reference."""
    if not _UNFRAMED:
        _UNFRAMED.append(NoticeRenderer(frames=False))
    return _UNFRAMED[0]


# Names a notice may carry: markup, Jinja's syntax, the frames' stand-ins, line breaks
# and bidi overrides (cleaned away), emoji, other scripts, an encoded word, long ones.
_ODD_NAMES = (None, "", "Zoë Martin", "<b>Eve</b> & co", "{{ username }} {% endif %}",
              "\ue000&a0\ue001", "Eve\r\nBcc: x@example.com", "\u202eevil\u202c",
              "🌸 Hana 🌸", "山田 太郎", "Αλέξης", "=?utf-8?q?Zo=C3=AB?=", "x" * 300,
              "Jean.-Luc =3D . \t tab", "  spaced   out  ")
_GRID_LOCALES = (*SUPPORTED_LOCALES, "en-GB", "pt-BR", "fr-CA", "de-AT", "zh-Hans-CN", "ko",
                 "", None)


@pytest.mark.parametrize("locale", _GRID_LOCALES)
def test_the_fast_path_and_the_plain_path_give_the_same_bytes(locale: str | None) -> None:
    """Frames (render_frames.py) against Jinja for every notice (`frames=False`): the same
    message, byte for byte, across languages, plural forms, one rule or several, and
    names with odd characters; and the fast path did fill these notices from frames."""
    fast, plain = NoticeRenderer(), _unframed()
    assert not any(templates.framed for templates in plain._templates.values())
    cases = 0
    for display_name in _ODD_NAMES:
        for username in ("zoe_m", "<i>&amp;</i>", "Eve\u2028Mallory"):
            for pins, rules, ban_date in ((0, ("spam_burst",), BAN_DATE),
                                          (1, ("spam_burst", "image_hash"), BAN_DATE),
                                          (7, ("<rule>", "a & b", "c"),
                                           datetime(2025, 4, 1, 23, 59, tzinfo=UTC)),
                                          (1234, ("spam_burst",), datetime(2025, 1, 1))):
                ctx = make_context(locale=locale, display_name=display_name,
                                   username=username, pins_restored=pins, rule_names=rules,
                                   ban_date=ban_date, account_id=1000 + cases)
                data = fast.render_bytes(ctx, now=NOW)
                assert data == plain.render_bytes(ctx, now=NOW), ctx
                parse(data)
                cases += 1
    assert plain._frame_cache == {}
    assert fast._frame_cache and all(frames is not None
                                     for frames in fast._frame_cache.values())


# Text a template could produce around the words: line ends of every kind, spaces and tabs
# before them, lone dots, "=", long lines that quoted-printable must break, non-ASCII.
_FRAME_TEXT = st.lists(
    st.one_of(
        st.sampled_from(("\n", "\r\n", "\r", " ", "\t", ".", "=", "é", "日本", "x" * 80)),
        st.text(st.characters(codec="utf-8", exclude_characters="\ue000\ue001"),
                max_size=10),
    ),
    max_size=12,
).map("".join)
_WORD = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\ue000\ue001"),
                min_size=1, max_size=90)


@given(
    parts=st.lists(_FRAME_TEXT, min_size=1, max_size=6),
    words=st.lists(_WORD, min_size=6, max_size=6),
    escaped=st.booleans(),
)
@settings(max_examples=1000, deadline=None)
def test_a_frame_encodes_a_line_at_a_time_as_the_whole_body_encodes(
    parts: list[str], words: list[str], escaped: bool
) -> None:
    from reinstatement.notices.mime import encode_body, normalise_newlines
    from reinstatement.notices.render_frames import Frame

    slots = [index % 6 for index in range(len(parts) - 1)]
    amp = "&amp;" if escaped else "&"
    rendered = parts[0] + "".join(f"\ue000{amp}a{slot}\ue001{part}"
                                  for slot, part in zip(slots, parts[1:], strict=True))
    frame = Frame.parse(rendered, escaped)
    assert frame is not None
    assert frame.encode(words) == encode_body(normalise_newlines(frame.fill(words)))


def test_the_shipped_bodies_are_filled_from_frames(renderer: NoticeRenderer) -> None:
    # Without this the test above would pass with frames never used.
    assert all(renderer._templates[language].framed for language in SUPPORTED_LOCALES)
    renderer._frame_cache.clear()
    for locale in SUPPORTED_LOCALES:
        for pins in (0, 1, 7):
            for display_name in (None, "<b>Zoë</b> & co"):
                ctx = make_context(locale=locale, pins_restored=pins,
                                   display_name=display_name)
                content = renderer.render_content(ctx)
                assert (content.text, content.html) == _jinja_content(renderer, ctx)
    # One shape for each plural form a language has among 0, 1 and 7, with and without a
    # display name (Japanese has no singular).
    shapes = {(locale, "zero" if pins == 0 else babel_locale_for(locale)[1].plural_form(pins),
               display_name is None)
              for locale in SUPPORTED_LOCALES for pins in (0, 1, 7)
              for display_name in (None, "x")}
    assert len(renderer._frame_cache) == len(shapes) == 34
    assert all(frames is not None for frames in renderer._frame_cache.values())


def _custom_templates(tmp_path: Path, text: str, html: str) -> NoticeRenderer:
    for locale in SUPPORTED_LOCALES:
        folder = tmp_path / locale
        folder.mkdir(exist_ok=True)
        (folder / "subject.txt").write_text("Subject\n", encoding="utf-8")
        (folder / "body.txt").write_text(text, encoding="utf-8")
        (folder / "body.html").write_text(html, encoding="utf-8")
    return NoticeRenderer(templates_dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "html"),
    [
        # Decides something by a word: never framed.
        ("{% if display_name|length > 3 %}long {% endif %}{{ username }}\n", "<p>x</p>\n"),
        ("{{ username|upper }}\n", "<p>{{ username }}</p>\n"),
        ("{% set who = username %}{{ who }}\n", "<p>x</p>\n"),
        ("{{ username }}\n", "<p>{{ display_name or username|title }}</p>\n"),
        # Prints a word unescaped in HTML: framed, but its stand-in comes out unescaped.
        ("{{ username }}\n",
         "{% autoescape false %}<p>{{ display_name }}</p>{% endautoescape %}\n"),
        # Escapes a word in the text body.
        ("{{ display_name|e }}\n", "<p>{{ username }}</p>\n"),
        # Prints words whole, then changes the whole output.
        ("{% filter upper %}{{ username }}{% endfilter %}\n", "<p>{{ username }}</p>\n"),
        ('{% filter replace("0", "1") %}{{ username }}, {{ display_name }}{% endfilter %}\n',
         "<p>{{ username }}</p>\n"),
    ],
)
def test_a_body_that_does_more_than_print_a_word_is_rendered_by_jinja(
    tmp_path: Path, text: str, html: str
) -> None:
    custom = _custom_templates(tmp_path, text, html)
    for display_name, username in (("Al", "<i>bob</i>"), ("A & <b>long</b>", "eve")):
        ctx = make_context(display_name=display_name, username=username)
        content = custom.render_content(ctx)
        assert (content.text, content.html) == _jinja_content(custom, ctx)
    assert all(frames is None for frames in custom._frame_cache.values())


def test_the_date_header_is_the_moment_in_utc_to_the_second(renderer: NoticeRenderer) -> None:
    for moment in (
        datetime(2025, 5, 2, 8, 30, 59, 999_999, tzinfo=UTC),
        datetime(2025, 5, 2, 10, 30, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ):
        message = parse(renderer.render_bytes(make_context(), now=moment))
        assert message["Date"] == format_datetime(moment.astimezone(UTC).replace(microsecond=0))


@given(st.one_of(st.text(), st.text(st.characters(codec="ascii")), _TEXT))
@settings(max_examples=500, deadline=None)
def test_cleaning_user_text_takes_out_the_same_characters_on_every_path(value: str) -> None:
    # The reference: the table applied to every character, runs of spaces made one.
    from reinstatement.notices.render import _UNSAFE_USER_CHARACTERS

    expected = re.sub(" {2,}", " ", value.translate(_UNSAFE_USER_CHARACTERS)).strip(" ")
    assert clean_user_text(value) == expected


def test_a_shape_is_made_only_of_what_the_templates_read() -> None:
    """Pin counts vary without end, but the bodies read only their plural form: a frame
    for each count would fill the cache and render every notice with Jinja twice over."""
    renderer = NoticeRenderer()
    for pins in range(300):
        for display_name in (None, "Zoë", ""):
            renderer.render_content(make_context(pins_restored=pins, display_name=display_name))
    # zero / one / other, with a display name or without one (an empty one is none).
    assert len(renderer._frame_cache) == 3 * 2
    assert all(frames is not None for frames in renderer._frame_cache.values())
