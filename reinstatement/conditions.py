"""The rule condition language of the platform contract: parsing, serialising and evaluating.

A rule version's condition is JSON (see "The condition language" in PLATFORM.md). This module
turns that JSON into a small immutable tree, refusing anything the contract does not allow with
an error that says where and what, and evaluates the tree against a ban's evidence in the
contract's three-valued logic, where ``None`` stands for unknown.

Evaluation runs once per faulty ban, possibly a million times per incident, so it is a plain
recursive walk with no per-call set-up; recursion is safe because the parser bounds the depth.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias, cast

Scalar: TypeAlias = int | Decimal | float | str | bool

OPERATORS: frozenset[str] = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not_in"})
SIGNAL_NAME: re.Pattern[str] = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""Use with ``fullmatch``: ``re.match`` with a ``$`` anchor would accept a trailing newline."""
MAX_DEPTH = 64
"""Deepest nesting accepted; the top-level condition is at depth 1."""

_LIST_OPERATORS = frozenset({"in", "not_in"})
_ORDERINGS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_COMPARISON_KEYS = frozenset({"signal", "op", "value"})

# The contract's three value types.
_NUMBER = "number"
_STRING = "string"
_BOOLEAN = "boolean"
_VALUE_KINDS = frozenset({_NUMBER, _STRING, _BOOLEAN})

# Why a comparison came out unknown (UnknownSignal.problem).
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
# The largest finite double. A number beyond it (1e309, an integer of 5,000 digits) is no
# finite number any database or client agrees on, so comparing with it is unknown.
LARGEST_NUMBER = Decimal("1.7976931348623157e308")
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
# as nested counts because PostgreSQL's regular expressions allow at most 255 repetitions
# (96 x 66 + 49 = 6,385). Only text at least this long can hold one, which
# condition_sql.py tests first.
UNREADABLE_FRACTION_DIGITS = 6385
UNREADABLE_FRACTION = r"\.(?:[0-9]{96}){66}[0-9]{49}"
UNREADABLE_TEXT = re.compile(
    f"{UNREADABLE_ESCAPES}|{UNREADABLE_EXPONENT}|{UNREADABLE_FRACTION}")

_ABSENT_MARKER = object()


class ConditionError(ValueError):
    """A condition that does not parse: ``path`` says where, ``problem`` says what."""

    path: str
    problem: str

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[type[ConditionError], tuple[str, str]]:
        # Exceptions pickle as cls(*args); args holds only the message, so rebuild from the parts
        # (Prefect pickles task exceptions).
        return (ConditionError, (self.path, self.problem))


@dataclass(frozen=True, slots=True)
class Comparison:
    """``{"signal": NAME, "op": OP, "value": V}``; for in/not_in the value is a tuple."""

    signal: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """``{"all": [...]}``: false if any part is false, else unknown if any is, else true."""

    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``{"any": [...]}``: true if any part is true, else unknown if any is, else false."""

    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """``{"not": C}``: swaps true and false, keeps unknown."""

    part: Condition


Condition: TypeAlias = Comparison | AllOf | AnyOf | Not


@dataclass(frozen=True, slots=True)
class UnknownSignal:
    """A signal whose comparison came out unknown, and why (one of UNKNOWN_PROBLEMS)."""

    signal: str
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"signal": self.signal, "problem": self.problem}


# --- parsing ---------------------------------------------------------------------------------


def parse_condition(raw: object, path: str = "condition") -> Condition:
    """Parse an already-decoded JSON condition; raise ConditionError naming where it is wrong."""
    return _parse(raw, path, 1)


def parse_condition_json(text: str | bytes, path: str = "condition") -> Condition:
    """Parse a condition from JSON text, refusing NaN/Infinity and duplicate keys.

    Numbers are read exactly: decimals as `Decimal`, so `100.1` means 100.1 and not the
    nearest binary fraction.
    """
    try:
        raw = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys,
            parse_float=Decimal,
        )
    except RecursionError:
        # json.loads recurses per nesting level; hostile input must not escape as RecursionError.
        raise ConditionError(path, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the refusals below
        raise ConditionError(path, f"not valid JSON: {err}") from None
    return parse_condition(raw, path)


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
                          parse_constant=_refuse_constant,
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


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would silently keep the last of two equal keys; a rule whose meaning depends on
    # which copy a reader kept is not a condition.
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def _parse(raw: object, path: str, depth: int) -> Condition:
    if depth > MAX_DEPTH:
        raise ConditionError(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, dict):
        raise ConditionError(path, f"expected an object, got {_json_type(raw)}")
    if _COMPARISON_KEYS & raw.keys():
        _check_keys(raw, _COMPARISON_KEYS, path)
        return _parse_comparison(raw, path)
    for combinator in ("all", "any", "not"):
        if combinator in raw:
            _check_keys(raw, frozenset({combinator}), path)
            break
    else:
        raise ConditionError(
            path,
            'expected the keys "signal", "op" and "value", or one of "all", "any" or "not", '
            f"got {_show_keys(raw)}",
        )
    if combinator == "not":
        return Not(_parse(raw["not"], f"{path}.not", depth + 1))
    items = raw[combinator]
    where = f"{path}.{combinator}"
    if not isinstance(items, list):
        raise ConditionError(where, f"expected a list, got {_json_type(items)}")
    parts = tuple(_parse(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(items))
    return AllOf(parts) if combinator == "all" else AnyOf(parts)


def _check_keys(raw: dict[object, object], allowed: frozenset[str], path: str) -> None:
    unexpected = [key for key in raw if key not in allowed]
    if unexpected:
        noun = "key" if len(unexpected) == 1 else "keys"
        raise ConditionError(path, f"unexpected {noun} {_show_list(unexpected)}")
    missing = sorted(allowed - raw.keys())
    if missing:
        noun = "key" if len(missing) == 1 else "keys"
        raise ConditionError(path, f"missing {noun} {_show_list(missing)}")


def _parse_comparison(raw: dict[object, object], path: str) -> Comparison:
    signal = raw["signal"]
    if not isinstance(signal, str):
        raise ConditionError(f"{path}.signal", f"expected a string, got {_json_type(signal)}")
    if SIGNAL_NAME.fullmatch(signal) is None:
        raise ConditionError(
            f"{path}.signal", f"signal name {_show(signal)} does not match ^[a-z][a-z0-9_]{{0,63}}$"
        )
    op = raw["op"]
    if not isinstance(op, str):
        raise ConditionError(f"{path}.op", f"expected a string, got {_json_type(op)}")
    if op not in OPERATORS:
        raise ConditionError(f"{path}.op", f"unknown operator {_show(op)}")
    raw_value = raw["value"]
    where = f"{path}.value"
    value: Scalar | tuple[Scalar, ...]
    if op in _LIST_OPERATORS:
        if not isinstance(raw_value, list):
            raise ConditionError(
                where, f"{_show(op)} needs a non-empty list, got {_json_type(raw_value)}"
            )
        if not raw_value:
            raise ConditionError(where, f"the list for {_show(op)} must not be empty")
        value = tuple(_parse_scalar(item, f"{where}[{i}]") for i, item in enumerate(raw_value))
    elif isinstance(raw_value, list):
        raise ConditionError(
            where, f'a list is allowed only for "in" and "not_in", not for {_show(op)}'
        )
    else:
        value = _parse_scalar(raw_value, where)
    return Comparison(signal, op, value)


# The most digits after the decimal point PostgreSQL's numeric holds: a condition's number
# with more could not be compared there (nor, then, anywhere: both databases judge alike).
MAX_SCALE = 16383


def _parse_scalar(raw: object, path: str) -> Scalar:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        # Text no database can hold or compare: refused, so that no batch fails on it.
        if "\x00" in raw:
            raise ConditionError(path, "holds a NUL character (\\u0000), which PostgreSQL "
                                 "text cannot hold")
        if any("\ud800" <= char <= "\udfff" for char in raw):
            raise ConditionError(path, "holds a lone surrogate (\\ud800 to \\udfff), which "
                                 "is no Unicode character")
        return raw
    if isinstance(raw, int | float | Decimal):
        if not _finite(raw):
            raise ConditionError(path, f"expected a finite number, got {raw!r}")
        if cast(Decimal, abs(raw)) > LARGEST_NUMBER:
            raise ConditionError(path, "expected a number of at most 1.8e308 in size")
        exponent = raw.as_tuple().exponent if isinstance(raw, Decimal) else 0
        if isinstance(exponent, int) and exponent < -MAX_SCALE:
            raise ConditionError(path, f"has more than {MAX_SCALE:,} digits after the decimal "
                                 "point, more than PostgreSQL's numeric holds")
        # Compared exactly: a float given here means the decimal it was written as.
        return Decimal(repr(raw)) if isinstance(raw, float) else raw
    raise ConditionError(path, f"expected a number, string or boolean, got {_json_type(raw)}")


def _finite(number: int | float | Decimal) -> bool:
    # Not math.isfinite: it converts a Decimal to float first, and 1e309 would be infinite.
    if isinstance(number, Decimal):
        return number.is_finite()
    return isinstance(number, int) or math.isfinite(number)


def _json_type(raw: object) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "boolean"
    if isinstance(raw, int | float | Decimal):
        return "number"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, list):
        return "list"
    if isinstance(raw, dict):
        return "object"
    return type(raw).__name__


def _show(raw: object) -> str:
    """Quote a value for a message, control characters escaped so it stays on one line."""
    try:
        return json.dumps(raw)
    except (TypeError, ValueError):
        return repr(raw)


def _show_list(items: Iterable[object]) -> str:
    return ", ".join(_show(item) for item in items)


def _show_keys(raw: dict[object, object]) -> str:
    return f"keys {_show_list(raw)}" if raw else "an empty object"


# --- serialising -----------------------------------------------------------------------------


def _json_number(value: object) -> object:
    """A Decimal as a JSON number (json cannot write Decimal); other values as they are."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    return value


def condition_to_json(cond: Condition) -> dict[str, object]:
    """The JSON form of a condition; parse_condition of it gives the condition back."""
    if isinstance(cond, Comparison):
        value = ([_json_number(v) for v in cond.value] if isinstance(cond.value, tuple)
                 else _json_number(cond.value))
        return {"signal": cond.signal, "op": cond.op, "value": value}
    if isinstance(cond, AllOf):
        return {"all": [condition_to_json(part) for part in cond.parts]}
    if isinstance(cond, AnyOf):
        return {"any": [condition_to_json(part) for part in cond.parts]}
    return {"not": condition_to_json(cond.part)}


def signals_of(cond: Condition) -> frozenset[str]:
    """Every signal name the condition compares."""
    names: set[str] = set()
    pending: list[Condition] = [cond]
    while pending:
        node = pending.pop()
        if isinstance(node, Comparison):
            names.add(node.signal)
        elif isinstance(node, Not):
            pending.append(node.part)
        else:
            pending.extend(node.parts)
    return frozenset(names)


# --- evaluating ------------------------------------------------------------------------------


def evaluate(cond: Condition, evidence: object) -> bool | None:
    """The condition's truth on a ban's evidence: True, False, or None for unknown."""
    if isinstance(evidence, dict):
        return _evaluate(cond, evidence, None, None)
    return _evaluate(cond, {}, _evidence_problem(evidence), None)


def explain(cond: Condition, evidence: object) -> tuple[bool | None, list[UnknownSignal]]:
    """The truth, plus the signals whose unknown comparisons made the result unknown.

    Only unknowns that reach the result are listed: in ``all`` with a false part, or ``any``
    with a true part, the unknown parts did not matter, so a known result lists none. Each
    signal appears once, in the order the condition first mentions it.
    """
    unknowns: list[UnknownSignal] = []
    if isinstance(evidence, dict):
        result = _evaluate(cond, evidence, None, unknowns)
    else:
        result = _evaluate(cond, {}, _evidence_problem(evidence), unknowns)
    return result, list(dict.fromkeys(unknowns))


def _evidence_problem(evidence: object) -> str:
    # Evidence that is not an object tells nothing about any signal: treat it like NULL, the
    # reading that never reinstates on evidence the engine did not record.
    if isinstance(evidence, UnreadableEvidence):
        return evidence.problem
    return NO_EVIDENCE if evidence is None else NOT_AN_OBJECT


def _evaluate(
    cond: Condition,
    values: dict[object, object],
    evidence_problem: str | None,
    unknowns: list[UnknownSignal] | None,
) -> bool | None:
    result: bool | None
    if isinstance(cond, Comparison):
        outcome = _compare(cond, values) if evidence_problem is None else evidence_problem
        if outcome is True or outcome is False:
            return outcome
        if unknowns is not None:
            unknowns.append(UnknownSignal(cond.signal, outcome))
        return None
    if isinstance(cond, Not):
        inner = _evaluate(cond.part, values, evidence_problem, unknowns)
        return None if inner is None else not inner
    mark = 0 if unknowns is None else len(unknowns)
    if isinstance(cond, AllOf):
        result = True
        for part in cond.parts:
            truth = _evaluate(part, values, evidence_problem, unknowns)
            if truth is False:
                result = False
                break
            if truth is None:
                result = None
    else:
        result = False
        for part in cond.parts:
            truth = _evaluate(part, values, evidence_problem, unknowns)
            if truth is True:
                result = True
                break
            if truth is None:
                result = None
    if result is not None and unknowns is not None:
        # A known result did not depend on the unknown parts: forget them.
        del unknowns[mark:]
    return result


def _compare(comparison: Comparison, values: dict[object, object]) -> bool | str:
    """True or False, or the problem that makes the comparison unknown."""
    value = values.get(comparison.signal, _ABSENT_MARKER)
    if value is _ABSENT_MARKER:
        return ABSENT
    kind = _kind(value)
    if kind not in _VALUE_KINDS:
        return kind
    op = comparison.op
    expected = comparison.value
    if op in _LIST_OPERATORS:
        # A value of one type never equals a list element of another: such elements are
        # simply not hits, so a string against a list of numbers is false, not unknown.
        found = False
        for element in cast(tuple[Scalar, ...], expected):
            if element == value and _kind(element) == kind:
                found = True
                break
        return found if op == "in" else not found
    if _kind(expected) != kind:
        return TYPE_MISMATCH
    if op == "==":
        return value == expected
    if op == "!=":
        return value != expected
    if kind != _NUMBER:
        return TYPE_MISMATCH  # ordering is defined on numbers only
    return _ORDERINGS[op](cast(Decimal, value), cast(Decimal, expected))


def _kind(value: object) -> str:
    """The contract type of a value (number, string, boolean), or why it has none."""
    if isinstance(value, bool):  # before int: a boolean is never a number
        return _BOOLEAN
    if isinstance(value, str):
        return _STRING
    if isinstance(value, int | Decimal | float):
        if not _finite(value):
            return NOT_A_NUMBER
        return _NUMBER if cast(Decimal, abs(value)) <= LARGEST_NUMBER else OUT_OF_RANGE
    if value is None:
        return NULL
    if value is DUPLICATED:
        return DUPLICATE_KEY
    return BAD_VALUE
