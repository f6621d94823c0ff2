"""The condition language compiled to SQL, for PostgreSQL (jsonb) and SQLite (its JSON functions).

`compile_condition` turns a parsed condition (`conditions.Condition`) into one SQL boolean
expression over a ban's evidence, with the contract's three-valued logic: SQL's NULL is
unknown, and SQL's AND, OR and NOT are already Kleene's. A comparison is NULL when its
signal is absent or null, nested (an object or a list), of another type than the operator
needs (booleans are never numbers; ordering compares numbers only), or a number that is not
finite or larger than the largest double. Numbers compare exactly, as decimals: PostgreSQL's
`numeric`, and on SQLite, which has no decimal type, a small function registered on each
connection (`reinstatement_decimal_cmp`) that compares the numbers' JSON text as Python
`Decimal`s. Every value and every signal name is a bound parameter, never pasted into the
statement.

Evidence is first read as `readable_evidence` does: text the Python decoder would refuse or
that no JSON function reads safely (not JSON, nested deeper than 64 levels, larger than
`MAX_EVIDENCE_CHARS`, an exponent of five digits or more, a NUL escape) is no evidence,
so every comparison on it is unknown, exactly as `conditions.decode_evidence` reads it
(`UnreadableEvidence`). The Python evaluator stays the reference: `tests/test_condition_sql.py`
generates conditions and evidence, writes them to each database and asserts both agree.
"""

from __future__ import annotations

import sqlite3
import typing
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Numeric,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH

from reinstatement.conditions import (
    ESCAPE_PREFIX,
    LARGEST_NUMBER,
    MAX_EVIDENCE_CHARS,
    MAX_EVIDENCE_DEPTH,
    UNREADABLE_ESCAPES,
    UNREADABLE_EXPONENT,
    UNREADABLE_FRACTION_DIGITS,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    Not,
    Scalar,
)

# Evidence text matching UNREADABLE_TEXT is not read; PostgreSQL's regular expressions
# read its escapes and exponents alike, and its fraction is found without one.
_PG_ESCAPE_OR_EXPONENT = f"{UNREADABLE_ESCAPES}|{UNREADABLE_EXPONENT}"
_SQLITE_DEPTH_FUNCTION = "reinstatement_json_depth"
_SQLITE_COMPARE_FUNCTION = "reinstatement_decimal_cmp"
_SQLITE_UNREADABLE_FUNCTION = "reinstatement_unreadable_text"
_ORDER = {"<": (-1,), "<=": (-1, 0), ">": (1,), ">=": (0, 1), "==": (0,), "!=": (-1, 1)}


def readable_evidence(evidence_text: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The evidence as the compiled conditions read it: a jsonb object on PostgreSQL, JSON
    text of an object on SQLite, or NULL when it is no readable object.

    One expression; where it is referred to many times per row, select `parsed_evidence`
    and then `object_evidence` of it in two subqueries, so it is parsed once.
    """
    return object_evidence(parsed_evidence(evidence_text, dialect), dialect)


def parsed_evidence(evidence_text: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The evidence text parsed where it is safe to: jsonb on PostgreSQL (the text on
    SQLite), NULL for text no JSON function reads safely."""
    if dialect == "postgresql":
        return case(
            (and_(func.length(evidence_text) <= MAX_EVIDENCE_CHARS,
                  not_(_pg_unreadable(evidence_text))),
             cast(evidence_text, JSONB)),
            else_=null(),
        )
    return case(
        (and_(func.length(evidence_text) <= MAX_EVIDENCE_CHARS,
              func.json_valid(evidence_text) == 1,
              getattr(func, _SQLITE_UNREADABLE_FUNCTION)(evidence_text) == 0,
              getattr(func, _SQLITE_DEPTH_FUNCTION)(evidence_text) <= MAX_EVIDENCE_DEPTH),
         evidence_text),
        else_=null(),
    )


def _pg_unreadable(evidence_text: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether the text matches UNREADABLE_TEXT. Its escape alternatives all begin with
    backslash-u, so text without one is tested against the exponent alone: the whole
    pattern's look-arounds cost PostgreSQL about 10 us a row, most of judging a batch."""
    long_enough = func.length(evidence_text) >= UNREADABLE_FRACTION_DIGITS
    return case(
        (func.strpos(evidence_text, bindparam(None, ESCAPE_PREFIX, type_=Text)) > 0,
         or_(evidence_text.regexp_match(_PG_ESCAPE_OR_EXPONENT),
             and_(long_enough, _pg_long_fraction(evidence_text)))),
        # Only text this long can hold a fraction too long for numeric.
        (long_enough, or_(evidence_text.regexp_match(UNREADABLE_EXPONENT),
                          _pg_long_fraction(evidence_text))),
        else_=evidence_text.regexp_match(UNREADABLE_EXPONENT),
    )


def _pg_long_fraction(evidence_text: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether the text matches UNREADABLE_FRACTION (a point, then 6,385 digits).

    PostgreSQL's regular expression of it took 50 to 110 ms a row on text holding a long
    fraction. Here a point and 255 digits are looked for first (0.6 to 1.4 ms on 99 KB),
    and only where found, the text with its digits read as zeros, reversed (so that a
    long run of digits without a point costs strpos one comparison a character), is
    searched for that many zeros and the point: at most 14 ms a row (bench/RESULTS.md)."""
    zeros = func.reverse(func.translate(evidence_text, "123456789", "000000000"))
    found = func.strpos(zeros, bindparam(None, "0" * UNREADABLE_FRACTION_DIGITS + ".",
                                         type_=Text)) > 0
    return case((evidence_text.regexp_match(r"\.[0-9]{255}"), found), else_=false())


def object_evidence(parsed: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """Parsed evidence if it is an object nested at most 64 levels deep, else NULL."""
    if dialect == "postgresql":
        deep = func.jsonb_path_exists(
            parsed, cast(bindparam("too_deep_path",
                                   f"strict $.**{{{MAX_EVIDENCE_DEPTH} to last}} ? "
                                   '(@.type() == "array" || @.type() == "object")',
                                   type_=Text),
                         JSONPATH))
        return case((and_(func.jsonb_typeof(parsed) == "object", not_(deep)), parsed),
                    else_=null())
    return case((func.json_type(parsed) == "object", parsed), else_=null())


def compile_condition(cond: Condition, doc: ColumnElement[Any], dialect: str,
                      evidence_text: ColumnElement[Any] | None = None) -> ColumnElement[bool]:
    """The condition as a SQL boolean over `doc` (from `readable_evidence`); NULL is unknown.

    `evidence_text`: the evidence's JSON text, where a comparison finds a signal the
    evidence object holds twice (`conditions.DUPLICATE_KEY`: unknown). Without it, a
    duplicated key is read as the database's JSON reads it (for tests of the rest).
    """
    compiler = (_PostgreSQL(doc, evidence_text) if dialect == "postgresql"
                else _SQLite(doc, evidence_text))
    return compiler.condition(cond)


def _unknown() -> ColumnElement[bool]:
    # Typed: an untyped NULL is text to PostgreSQL, which NOT and IS TRUE refuse.
    return typing.cast(ColumnElement[bool], cast(null(), Boolean))


class _Compiler:
    def __init__(self, doc: ColumnElement[Any], text: ColumnElement[Any] | None) -> None:
        self.doc = doc
        self.text = text

    def condition(self, cond: Condition) -> ColumnElement[bool]:
        if isinstance(cond, Comparison):
            return self.comparison(cond)
        if isinstance(cond, Not):
            return not_(self.condition(cond.part))
        if isinstance(cond, AllOf):
            return and_(true(), *[self.condition(p) for p in cond.parts])
        if isinstance(cond, AnyOf):
            return or_(false(), *[self.condition(p) for p in cond.parts])
        raise TypeError(f"not a condition: {cond!r}")

    def comparison(self, cond: Comparison) -> ColumnElement[bool]:
        compared = self.compared(cond)
        if self.text is None:
            return compared
        return case((self.duplicated(cond.signal), _unknown()), else_=compared)

    def duplicated(self, name: str) -> ColumnElement[bool]:
        """Whether the evidence object holds the key `name` more than once. Counting its
        keys is dear (~10 us a row on PostgreSQL), so it is counted only where the text
        could hold it twice: the key's own quoted name found twice, or an escape (a key's
        letters may be written as escapes)."""
        assert self.text is not None
        token = bindparam(None, f'"{name}"', type_=Text)
        first = func.instr(self.text, token) if isinstance(self, _SQLite) else func.strpos(
            self.text, token)
        rest = func.substr(self.text, first + len(name) + 2)
        again = (func.instr(rest, token) if isinstance(self, _SQLite)
                 else func.strpos(rest, token)) > 0
        escaped = (func.instr(self.text, ESCAPE_PREFIX) if isinstance(self, _SQLite)
                   else func.strpos(self.text, bindparam(None, ESCAPE_PREFIX, type_=Text))) > 0
        maybe = and_(self.doc.is_not(None), or_(escaped, and_(first > 0, again)))
        return case((maybe, self.key_count(name) > 1), else_=false())

    def key_count(self, name: str) -> ColumnElement[Any]:
        raise NotImplementedError

    def compared(self, cond: Comparison) -> ColumnElement[bool]:
        signal = self.signal(cond.signal)
        if cond.op in ("in", "not_in"):
            assert isinstance(cond.value, tuple)
            found = self.found_in(signal, cond.value)
            return found if cond.op == "in" else not_(found)
        value = cond.value
        assert not isinstance(value, tuple)
        if isinstance(value, bool):
            if cond.op not in ("==", "!="):
                return _unknown()
            return case((self.is_boolean(signal),
                         self.compare_equal(self.boolean(signal), value, cond.op)),
                        else_=null())
        if isinstance(value, str):
            if cond.op not in ("==", "!="):
                return _unknown()
            return case((self.is_string(signal),
                         self.compare_equal(self.string(signal), value, cond.op)),
                        else_=null())
        return case((self.is_number(signal), self.compare_number(signal, value, cond.op)),
                    else_=null())

    def compare_equal(self, column: ColumnElement[Any], value: Scalar, op: str
                      ) -> ColumnElement[bool]:
        bound = bindparam(None, value, type_=Boolean if isinstance(value, bool)
                          else Text)
        return column == bound if op == "==" else column != bound

    def found_in(self, signal: Any, values: tuple[Scalar, ...]) -> ColumnElement[bool]:
        """`in`: true when equal to an element of its own type, false when none, NULL when
        the signal is absent, null, nested or not a usable number."""
        booleans = [v for v in values if isinstance(v, bool)]
        strings = [v for v in values if isinstance(v, str)]
        numbers = [v for v in values if not isinstance(v, bool | str)]
        hits: list[ColumnElement[bool]] = [false()]
        if booleans:
            hits.append(and_(self.is_boolean(signal), or_(*[
                self.boolean(signal) == bindparam(None, b, type_=Boolean)
                for b in booleans])))
        if strings:
            hits.append(and_(self.is_string(signal), or_(*[
                self.string(signal) == bindparam(None, s, type_=Text)
                for s in strings])))
        if numbers:
            hits.append(and_(self.is_number(signal), or_(*[
                self.compare_number(signal, n, "==") for n in numbers])))
        known = or_(self.is_boolean(signal), self.is_string(signal), self.is_number(signal))
        return case((known, or_(*hits)), else_=null())

    # dialect specifics
    def signal(self, name: str) -> Any:
        raise NotImplementedError

    def is_boolean(self, signal: Any) -> ColumnElement[bool]:
        raise NotImplementedError

    def is_string(self, signal: Any) -> ColumnElement[bool]:
        raise NotImplementedError

    def is_number(self, signal: Any) -> ColumnElement[bool]:
        """A finite number no larger than the largest double."""
        raise NotImplementedError

    def boolean(self, signal: Any) -> ColumnElement[Any]:
        raise NotImplementedError

    def string(self, signal: Any) -> ColumnElement[Any]:
        raise NotImplementedError

    def compare_number(self, signal: Any, value: Scalar, op: str) -> ColumnElement[bool]:
        raise NotImplementedError


class _PostgreSQL(_Compiler):
    def key_count(self, name: str) -> ColumnElement[Any]:
        # The text as json (not jsonb), which keeps every copy of a key.
        keys = func.json_object_keys(cast(self.text, JSON)).table_valued(
            "key").render_derived("copies")
        return (select(func.count()).select_from(keys)
                .where(keys.c.key == bindparam(None, name, type_=Text)).scalar_subquery())

    def signal(self, name: str) -> Any:
        key = bindparam(None, name, type_=Text)
        return (self.doc.op("->")(key), self.doc.op("->>")(key))

    def is_boolean(self, signal: Any) -> ColumnElement[bool]:
        return func.jsonb_typeof(signal[0]) == "boolean"

    def is_string(self, signal: Any) -> ColumnElement[bool]:
        return func.jsonb_typeof(signal[0]) == "string"

    def is_number(self, signal: Any) -> ColumnElement[bool]:
        number = case((func.jsonb_typeof(signal[0]) == "number", cast(signal[1], Numeric)),
                      else_=null())
        # Never NULL for a present signal: `in` must read "not a number" as false.
        return func.coalesce(func.abs(number) <= literal(LARGEST_NUMBER, Numeric), false())

    def boolean(self, signal: Any) -> ColumnElement[Any]:
        return cast(signal[1], Boolean)

    def string(self, signal: Any) -> ColumnElement[Any]:
        return signal[1]

    def compare_number(self, signal: Any, value: Scalar, op: str) -> ColumnElement[bool]:
        number = case((func.jsonb_typeof(signal[0]) == "number", cast(signal[1], Numeric)),
                      else_=null())
        bound = bindparam(None, Decimal(str(value)), type_=Numeric)
        return {"==": number == bound, "!=": number != bound, "<": number < bound,
                "<=": number <= bound, ">": number > bound, ">=": number >= bound}[op]


class _SQLite(_Compiler):
    def key_count(self, name: str) -> ColumnElement[Any]:
        keys = func.json_each(self.doc).table_valued("key")
        return (select(func.count()).select_from(keys)
                .where(keys.c.key == bindparam(None, name, type_=Text)).scalar_subquery())

    def signal(self, name: str) -> Any:
        path = bindparam(None, f'$."{name}"', type_=Text)
        return (func.json_type(self.doc, path), path)

    def is_boolean(self, signal: Any) -> ColumnElement[bool]:
        return signal[0].in_(["true", "false"])

    def is_string(self, signal: Any) -> ColumnElement[bool]:
        return signal[0] == "text"

    def is_number(self, signal: Any) -> ColumnElement[bool]:
        return and_(signal[0].in_(["integer", "real"]),
                    getattr(func, _SQLITE_COMPARE_FUNCTION)(
                        self.doc.op("->")(signal[1]), None).is_not(None))

    def boolean(self, signal: Any) -> ColumnElement[Any]:
        return signal[0] == "true"

    def string(self, signal: Any) -> ColumnElement[Any]:
        return func.json_extract(self.doc, signal[1])

    def compare_equal(self, column: ColumnElement[Any], value: Scalar, op: str
                      ) -> ColumnElement[bool]:
        if isinstance(value, bool):  # `column` is json_type(...) == 'true'
            return column == value if op == "==" else column != value
        return super().compare_equal(column, value, op)

    def compare_number(self, signal: Any, value: Scalar, op: str) -> ColumnElement[bool]:
        order = getattr(func, _SQLITE_COMPARE_FUNCTION)(
            self.doc.op("->")(signal[1]), bindparam(None, str(value), type_=Text))
        return case((signal[0].in_(["integer", "real"]), order.in_(_ORDER[op])), else_=null())


# -- SQLite's functions -------------------------------------------------------------------

def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or abs(number) > LARGEST_NUMBER:
        return None
    return number


def _decimal_cmp(left: str | None, right: str | None) -> int | None:
    """-1, 0 or 1 comparing two JSON numbers exactly; NULL if either is no usable number.
    With `right` NULL: 0 when `left` is a usable number (a range check), else NULL."""
    a = _decimal(left)
    if a is None:
        return None
    if right is None:
        return 0
    b = _decimal(right)
    if b is None:
        return None
    return (a > b) - (a < b)


def register_sqlite_functions(dbapi_connection: sqlite3.Connection) -> None:
    """Register the functions the compiled conditions call, on one SQLite connection."""
    from reinstatement.conditions import evidence_depth, unreadable_text

    dbapi_connection.create_function(_SQLITE_COMPARE_FUNCTION, 2, _decimal_cmp,
                                     deterministic=True)
    dbapi_connection.create_function(_SQLITE_DEPTH_FUNCTION, 1, evidence_depth,
                                     deterministic=True)
    dbapi_connection.create_function(
        _SQLITE_UNREADABLE_FUNCTION, 1,
        lambda text: None if text is None else int(unreadable_text(text)), deterministic=True)
