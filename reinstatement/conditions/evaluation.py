"""The three-valued reference evaluator: a condition's truth on a ban's evidence, where
``None`` stands for unknown, and which signals made it unknown. Plain Python: no database;
`condition_sql.py` compiles the same judgement to SQL and is tested against this one.

Evaluation runs once per faulty ban, possibly a million times per incident, so it is a plain
recursive walk with no per-call set-up; recursion is safe because the parser bounds the depth.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from reinstatement.conditions.evidence import (
    ABSENT,
    BAD_VALUE,
    DUPLICATE_KEY,
    DUPLICATED,
    NO_EVIDENCE,
    NOT_A_NUMBER,
    NOT_AN_OBJECT,
    NULL,
    OUT_OF_RANGE,
    TYPE_MISMATCH,
    UnreadableEvidence,
)
from reinstatement.conditions.language import (
    LARGEST_NUMBER,
    LIST_OPERATORS,
    AllOf,
    Comparison,
    Condition,
    Not,
    Scalar,
    finite,
)

_ORDERINGS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

# The contract's three value types.
_NUMBER = "number"
_STRING = "string"
_BOOLEAN = "boolean"
_VALUE_KINDS = frozenset({_NUMBER, _STRING, _BOOLEAN})

_ABSENT_MARKER = object()


@dataclass(frozen=True, slots=True)
class UnknownSignal:
    """A signal whose comparison came out unknown, and why (one of UNKNOWN_PROBLEMS)."""

    signal: str
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"signal": self.signal, "problem": self.problem}


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
    if op in LIST_OPERATORS:
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
        if not finite(value):
            return NOT_A_NUMBER
        return _NUMBER if cast(Decimal, abs(value)) <= LARGEST_NUMBER else OUT_OF_RANGE
    if value is None:
        return NULL
    if value is DUPLICATED:
        return DUPLICATE_KEY
    return BAD_VALUE
