"""What a valid address is: a notice's recipient, its sender's domain, its Message-ID.

The recipient becomes the To header and the SMTP envelope recipient, so the rules here
are strict; the renderer and every backend apply the same ones.
"""

from __future__ import annotations

import hashlib
import re
from email.utils import parseaddr

# RFC 5322 dot-atom for the local part. Quoted local parts and SMTPUTF8 (non-ASCII local
# parts) are refused: the headers here are 7-bit, and an address that needs either is
# better reported as undeliverable than sent half-right.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MESSAGE_ID_RE = re.compile(rf"<{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*>")


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
