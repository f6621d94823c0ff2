"""The condition language of the platform contract: the tree a rule version's condition
is, parsing it from JSON with every refusal the contract makes, and writing it back.

A rule version's condition is JSON (see "The condition language" in PLATFORM.md). This module
turns that JSON into a small immutable tree, refusing anything the contract does not allow with
an error that says where and what (`ConditionError`). Plain Python: no database.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias, cast

Scalar: TypeAlias = int | Decimal | float | str | bool

OPERATORS: frozenset[str] = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not_in"})
SIGNAL_NAME: re.Pattern[str] = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""Use with ``fullmatch``: ``re.match`` with a ``$`` anchor would accept a trailing newline."""
MAX_DEPTH = 64
"""Deepest nesting accepted; the top-level condition is at depth 1."""

LIST_OPERATORS = frozenset({"in", "not_in"})
_COMPARISON_KEYS = frozenset({"signal", "op", "value"})

# The largest finite double. A number beyond it (1e309, an integer of 5,000 digits) is no
# finite number any database or client agrees on, so comparing with it is unknown.
LARGEST_NUMBER = Decimal("1.7976931348623157e308")


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
            text, parse_constant=refuse_constant, object_pairs_hook=_refuse_duplicate_keys,
            parse_float=Decimal,
        )
    except RecursionError:
        # json.loads recurses per nesting level; hostile input must not escape as RecursionError.
        raise ConditionError(path, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the refusals below
        raise ConditionError(path, f"not valid JSON: {err}") from None
    return parse_condition(raw, path)


def refuse_constant(name: str) -> object:
    """A JSON reader's hook: NaN and Infinity are no JSON numbers (evidence refuses them too)."""
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
    if op in LIST_OPERATORS:
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
        if not finite(raw):
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


def finite(number: int | float | Decimal) -> bool:
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

