"""A ban's evidence: how its JSON text is read, exactly and without trusting it, what is
not read at all (alike here and in the SQL of `condition_sql.py`), and the reasons a
signal's comparison may be unknown. Plain Python: no database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal

from reinstatement.conditions.language import refuse_constant

# Why a comparison came out unknown (UnknownSignal.problem, in evaluation.py).
ABSENT = "absent"
NULL = "null"
TYPE_MISMATCH = "type_mismatch"
NOT_A_NUMBER = "not_a_number"
OUT_OF_RANGE = "number_out_of_range"
NO_EVIDENCE = "no_evidence"
NOT_AN_OBJECT = "not_an_object"
EVIDENCE_TOO_DEEP = "evidence_nested_too_deep"
EVIDENCE_UNREADABLE = "evidence_unreadable"
BAD_VALUE = "bad_value"
# The signal is a key the evidence object holds twice: which value the engine meant is
# ambiguous (JSON readers disagree: SQLite's reads the first, PostgreSQL's and Python's the
# last), so the comparison is unknown and the case goes to review.
DUPLICATE_KEY = "duplicate_key"
UNKNOWN_PROBLEMS = frozenset(
    {ABSENT, NULL, TYPE_MISMATCH, NOT_A_NUMBER, OUT_OF_RANGE, NO_EVIDENCE, NOT_AN_OBJECT,
     EVIDENCE_TOO_DEEP, EVIDENCE_UNREADABLE, BAD_VALUE, DUPLICATE_KEY}
)
# Evidence is an object of signals: nesting deeper than this is no evidence the engine
# wrote, and a decoder that followed it would exhaust the stack.
MAX_EVIDENCE_DEPTH = 64
# Larger evidence text is not read: no engine writes a megabyte of signals, and numbers of
# more digits than this are beyond what a database's JSON functions take safely.
MAX_EVIDENCE_CHARS = 100_000
# Evidence text holding any of these is not read either, by this decoder nor by the SQL
# compiler (condition_sql.py), so that both read the same rows: a NUL or a lone surrogate
# escape (PostgreSQL's jsonb refuses them, so the whole statement would fail), an
# exponent of five digits or more, and a fraction too long (both beyond PostgreSQL's
# numeric, see below). A number the platform's
# engine writes has none of these; a row that does goes to review, its signals unknown.
# Every escape alternative begins with the two characters backslash and u, so text without
# them can only match the exponent (condition_sql.py tests that first: PostgreSQL's
# regular expressions take about 10 us a row for the look-arounds, strpos well under 1).
ESCAPE_PREFIX = "\\u"
UNREADABLE_ESCAPES = (
    r"\\u0000"
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"  # high, no low after
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # low, no high before
)
UNREADABLE_EXPONENT = r"[0-9][eE][+-]?[0-9]{5,}"
# A number with 6,385 or more digits after its decimal point: with an exponent of -9999 (a
# longer one is unreadable already) its scale would pass the 16,383 digits after the point
# that PostgreSQL's numeric holds (6,384 + 9,999 = 16,383 is the most it takes). Written
# as nested counts, 96 x 66 + 49 = 6,385 (a regular expression of PostgreSQL's allows at
# most 255 repetitions; condition_sql.py finds it there with strpos, which is faster).
# Only text at least this long can hold one, which condition_sql.py tests first.
UNREADABLE_FRACTION_DIGITS = 6385
UNREADABLE_FRACTION = r"\.(?:[0-9]{96}){66}[0-9]{49}"
UNREADABLE_TEXT = re.compile(
    f"{UNREADABLE_ESCAPES}|{UNREADABLE_EXPONENT}|{UNREADABLE_FRACTION}")


@dataclass(frozen=True, slots=True)
class UnreadableEvidence:
    """Evidence whose JSON could not be read safely; every comparison on it is unknown."""

    problem: str  # EVIDENCE_TOO_DEEP or EVIDENCE_UNREADABLE
    detail: str


def decode_evidence(text: str | None) -> object:
    """A ban's evidence from its JSON text, read exactly and without trusting it.

    Numbers become `int` or `Decimal` (never float), so comparisons are exact. Text that
    is not JSON, nests deeper than MAX_EVIDENCE_DEPTH, or that Python's decoder refuses
    (an integer of thousands of digits) becomes `UnreadableEvidence` instead of an error:
    one poisoned row must not stop the batch it is in.
    """
    if text is None:
        return None
    if len(text) > MAX_EVIDENCE_CHARS:
        return UnreadableEvidence(EVIDENCE_UNREADABLE,
                                  f"{len(text)} characters long (at most {MAX_EVIDENCE_CHARS})")
    if unreadable_text(text):
        return UnreadableEvidence(EVIDENCE_UNREADABLE,
                                  "holds a NUL or lone surrogate escape, or a huge exponent")
    depth = _nesting_depth(text)
    if depth > MAX_EVIDENCE_DEPTH:
        return UnreadableEvidence(EVIDENCE_TOO_DEEP,
                                  f"nested {depth} levels deep (at most {MAX_EVIDENCE_DEPTH})")
    try:
        return json.loads(text, parse_float=Decimal, parse_int=_exact_int,
                          parse_constant=refuse_constant,
                          object_pairs_hook=_mark_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        return UnreadableEvidence(EVIDENCE_UNREADABLE, str(exc)[:200])


class _Duplicated:
    """The value of a key an evidence object holds more than once."""

    def __repr__(self) -> str:
        return "<duplicated key>"


DUPLICATED = _Duplicated()


def _mark_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Each key once; a key written twice (however its letters were escaped) holds no value
    # a comparison may use.
    obj: dict[str, object] = {}
    for key, value in pairs:
        obj[key] = DUPLICATED if key in obj else value
    return obj


def _exact_int(digits: str) -> int | Decimal:
    # Python refuses int() on more than 4,300 digits; such a number is out of range anyway.
    return int(digits) if len(digits) <= 400 else Decimal(digits)


def unreadable_text(text: str) -> bool:
    """Whether evidence text holds what neither this decoder nor SQL reads (UNREADABLE_TEXT)."""
    return UNREADABLE_TEXT.search(text) is not None


def evidence_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (SQLite's compiled
    conditions call it as a function)."""
    return _nesting_depth(text)


def _nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text, brackets in strings aside."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


