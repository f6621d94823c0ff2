"""Operators' sentences put together from pieces other people wrote (notes, reasons)."""

from __future__ import annotations

SENTENCE_ENDINGS = (".", "!", "?", "…")


def sentence(text: str) -> str:
    """`text` ended as one sentence: a full stop added unless it already ends with one (or
    with ! ? …), so a note that ends with a full stop does not get a second."""
    text = text.rstrip()
    return text if not text or text.endswith(SENTENCE_ENDINGS) else text + "."
