"""How a notice's text becomes 7-bit wire bytes: header values, bodies, line ends, Date.

Shared by the renderer (render.py) and its frames (render_frames.py), which must encode a
body exactly alike: the tests compare the two paths byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime
from functools import lru_cache


def encode_header_text(value: str, header_name: str) -> bytes:
    """An unstructured header value, RFC 2047-encoded and folded only when it must be."""
    if value.isascii() and value.isprintable() and len(value) + len(header_name) < 76:
        return value.encode("ascii")
    return Header(value, "utf-8", header_name=header_name).encode(linesep="\r\n").encode("ascii")


def encode_body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body) for UTF-8 text, 7-bit safe, CRLF lines.

    Like the standard library, pick whichever of quoted-printable and base64 is shorter:
    quoted-printable keeps Latin-script notices readable in the file backend's .eml files,
    base64 keeps Japanese ones a third of the size.
    """
    raw = text.encode("utf-8", "replace")
    return shorter_encoding(raw, binascii.b2a_qp(raw, istext=True))


def shorter_encoding(raw: bytes, qp: bytes) -> tuple[bytes, bytes]:
    """`encode_body`'s choice, given the text's UTF-8 and its quoted-printable form."""
    base64_size = (len(raw) + 2) // 3 * 4 * 77 // 76 + 2
    if len(qp) <= base64_size:
        return b"quoted-printable", qp.replace(b"\n", b"\r\n")
    # RFC 2045: base64 text is encoded in canonical form, that is with CRLF line breaks.
    canonical = raw.replace(b"\n", b"\r\n")
    return b"base64", base64.encodebytes(canonical).replace(b"\n", b"\r\n")


def normalise_newlines(text: str) -> str:
    """Every line end made LF, and a last one added if the text lacks it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


@lru_cache(maxsize=8)
def date_header(second: int) -> bytes:
    """The Date header's value for a moment, to the second (RFC 5322 has no fractions).
    Cached: a sender writes many notices within each second."""
    return format_datetime(datetime.fromtimestamp(second, UTC)).encode("ascii")
