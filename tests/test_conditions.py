"""The condition language, clause by clause as PLATFORM.md states it, plus its algebraic laws."""

from __future__ import annotations

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reinstatement.conditions import (
    MAX_DEPTH,
    OPERATORS,
    SIGNAL_NAME,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    ConditionError,
    Not,
    Scalar,
    UnknownSignal,
    condition_to_json,
    evaluate,
    explain,
    parse_condition,
    parse_condition_json,
    signals_of,
)

ABSENT = object()  # the signal is not in the evidence at all
T, F, U = True, False, None  # the three truth values; U is unknown


def compare(op: str, value: Scalar | tuple[Scalar, ...], seen: object) -> bool | None:
    """Evaluate ``s OP value`` on evidence where s is ``seen`` (or missing for ABSENT)."""
    evidence = {} if seen is ABSENT else {"s": seen}
    return evaluate(Comparison("s", op, value), evidence)


# --- comparisons ---------------------------------------------------------------------------

EQUALITY_CASES = [
    pytest.param("==", 5, 5, T, id="eq-number-equal"),
    pytest.param("==", 5, 6, F, id="eq-number-different"),
    pytest.param("==", 1, 1.0, T, id="eq-int-equals-float"),
    pytest.param("==", 2.5, 2.5, T, id="eq-float-equal"),
    pytest.param("==", "a", "a", T, id="eq-string-equal"),
    pytest.param("==", "a", "b", F, id="eq-string-different"),
    pytest.param("==", "", "", T, id="eq-empty-string"),
    pytest.param("==", True, True, T, id="eq-boolean-equal"),
    pytest.param("==", True, False, F, id="eq-boolean-different"),
    pytest.param("==", 1, True, U, id="eq-boolean-evidence-is-not-a-number"),
    pytest.param("==", True, 1, U, id="eq-boolean-value-is-not-a-number"),
    pytest.param("==", False, 0, U, id="eq-false-is-not-zero"),
    pytest.param("==", 1, "1", U, id="eq-string-evidence-vs-number"),
    pytest.param("==", "true", True, U, id="eq-boolean-evidence-vs-string"),
    pytest.param("!=", 5, 6, T, id="ne-number-different"),
    pytest.param("!=", 5, 5, F, id="ne-number-equal"),
    pytest.param("!=", 1, 1.0, F, id="ne-int-equals-float"),
    pytest.param("!=", "a", "b", T, id="ne-string-different"),
    pytest.param("!=", "a", "a", F, id="ne-string-equal"),
    pytest.param("!=", False, True, T, id="ne-boolean-different"),
    pytest.param("!=", True, True, F, id="ne-boolean-equal"),
    pytest.param("!=", 1, "a", U, id="ne-mismatch-is-unknown-not-true"),
    pytest.param("!=", 0, False, U, id="ne-boolean-is-not-a-number"),
    pytest.param("!=", "x", 3, U, id="ne-number-evidence-vs-string"),
]

ORDERING_CASES = [
    pytest.param("<", 5, 4, T, id="lt-true"),
    pytest.param("<", 5, 5, F, id="lt-equal-is-false"),
    pytest.param("<", 5, 6, F, id="lt-false"),
    pytest.param("<=", 5, 5, T, id="le-equal"),
    pytest.param("<=", 5, 6, F, id="le-false"),
    pytest.param(">", 5, 6, T, id="gt-true"),
    pytest.param(">", 5, 5, F, id="gt-equal-is-false"),
    pytest.param(">=", 5, 5, T, id="ge-equal"),
    pytest.param(">=", 5, 4.5, F, id="ge-false-float"),
    pytest.param(">=", 4.5, 5, T, id="ge-int-evidence-float-value"),
    pytest.param("<", 2, -1, T, id="lt-negative"),
    pytest.param("<", "b", "a", U, id="lt-strings-unknown"),
    pytest.param(">=", "a", "a", U, id="ge-equal-strings-unknown"),
    pytest.param("<", True, False, U, id="lt-booleans-unknown"),
    pytest.param("<", 2, True, U, id="lt-boolean-evidence-is-not-a-number"),
    pytest.param(">", True, 2, U, id="gt-boolean-value-is-not-a-number"),
    pytest.param("<=", 2, "1", U, id="le-string-evidence-vs-number"),
    pytest.param(">", "b", 1, U, id="gt-number-evidence-vs-string"),
]

MEMBERSHIP_CASES = [
    pytest.param("in", (1, 2, 3), 2, T, id="in-number-hit"),
    pytest.param("in", (1, 2, 3), 4, F, id="in-number-no-hit"),
    pytest.param("in", (1, 2), 2.0, T, id="in-float-equals-int-element"),
    pytest.param("in", ("x", "y"), "y", T, id="in-string-hit"),
    pytest.param("in", ("x", "y"), "z", F, id="in-string-no-hit"),
    pytest.param("in", (True,), True, T, id="in-boolean-hit"),
    pytest.param("in", (1, 2), "1", F, id="in-string-vs-numbers-only-is-false"),
    pytest.param("in", (1, 0), True, F, id="in-boolean-vs-numbers-is-false"),
    pytest.param("in", (True, False), 1, F, id="in-number-vs-booleans-is-false"),
    pytest.param("in", ("1",), 1, F, id="in-number-vs-strings-is-false"),
    pytest.param("in", (1, "a", True), "a", T, id="in-mixed-list-hit"),
    pytest.param("in", (1, "a", True), True, T, id="in-mixed-list-boolean-hit"),
    pytest.param("in", (True, "1"), 1, F, id="in-mixed-list-only-other-types-equal"),
    pytest.param("in", (1, "a"), "b", F, id="in-mixed-list-no-hit"),
    pytest.param("not_in", (1, 2, 3), 2, F, id="not_in-number-hit"),
    pytest.param("not_in", (1, 2, 3), 4, T, id="not_in-number-no-hit"),
    pytest.param("not_in", ("x",), "x", F, id="not_in-string-hit"),
    pytest.param("not_in", (1, 2), "1", T, id="not_in-string-vs-numbers-only-is-true"),
    pytest.param("not_in", (1,), True, T, id="not_in-boolean-vs-numbers-is-true"),
    pytest.param("not_in", (1, "a", False), False, F, id="not_in-mixed-list-hit"),
]


@pytest.mark.parametrize(("op", "value", "seen", "expected"), EQUALITY_CASES)
def test_equality_compares_values_of_the_same_type(
    op: str, value: Scalar, seen: object, expected: bool | None
) -> None:
    assert compare(op, value, seen) is expected


@pytest.mark.parametrize(("op", "value", "seen", "expected"), ORDERING_CASES)
def test_ordering_compares_numbers_only(
    op: str, value: Scalar, seen: object, expected: bool | None
) -> None:
    assert compare(op, value, seen) is expected


@pytest.mark.parametrize(("op", "value", "seen", "expected"), MEMBERSHIP_CASES)
def test_in_hits_elements_of_its_own_type_only(
    op: str, value: tuple[Scalar, ...], seen: object, expected: bool | None
) -> None:
    assert compare(op, value, seen) is expected


def _value_for(op: str) -> Scalar | tuple[Scalar, ...]:
    return (1, "a", True) if op in ("in", "not_in") else 1


@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize(
    "seen",
    [
        pytest.param(ABSENT, id="absent"),
        pytest.param(None, id="null"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="infinity"),
        pytest.param(-math.inf, id="minus-infinity"),
        pytest.param([1], id="list-value"),
        pytest.param({"a": 1}, id="object-value"),
    ],
)
def test_every_operator_is_unknown_on_a_missing_or_unusable_value(op: str, seen: object) -> None:
    assert compare(op, _value_for(op), seen) is None


# --- all, any, not ---------------------------------------------------------------------------

# One leaf per truth value, each on its own signal, all on the same evidence.
LEAVES: dict[bool | None, Condition] = {
    T: Comparison("yes", "==", True),
    F: Comparison("no", "==", True),
    U: Comparison("gone", "==", True),
}
LEAF_EVIDENCE = {"yes": True, "no": False}
NAMES = {T: "T", F: "F", U: "U"}

ALL_TABLE = [
    ((T, T), T), ((T, F), F), ((T, U), U),
    ((F, T), F), ((F, F), F), ((F, U), F),
    ((U, T), U), ((U, F), F), ((U, U), U),
    ((), T), ((T,), T), ((F,), F), ((U,), U),
    ((T, U, F), F), ((U, T, T), U), ((T, T, T), T),
]  # fmt: skip
ANY_TABLE = [
    ((T, T), T), ((T, F), T), ((T, U), T),
    ((F, T), T), ((F, F), F), ((F, U), U),
    ((U, T), T), ((U, F), U), ((U, U), U),
    ((), F), ((T,), T), ((F,), F), ((U,), U),
    ((F, U, T), T), ((U, F, F), U), ((F, F, F), F),
]  # fmt: skip


def _table_id(parts: tuple[bool | None, ...], expected: bool | None) -> str:
    return f"{''.join(NAMES[p] for p in parts) or 'empty'}->{NAMES[expected]}"


@pytest.mark.parametrize(
    ("parts", "expected"), [pytest.param(*row, id=_table_id(*row)) for row in ALL_TABLE]
)
def test_all_is_false_if_any_part_false_else_unknown_if_any_unknown(
    parts: tuple[bool | None, ...], expected: bool | None
) -> None:
    condition = AllOf(tuple(LEAVES[part] for part in parts))
    assert evaluate(condition, LEAF_EVIDENCE) is expected


@pytest.mark.parametrize(
    ("parts", "expected"), [pytest.param(*row, id=_table_id(*row)) for row in ANY_TABLE]
)
def test_any_is_true_if_any_part_true_else_unknown_if_any_unknown(
    parts: tuple[bool | None, ...], expected: bool | None
) -> None:
    condition = AnyOf(tuple(LEAVES[part] for part in parts))
    assert evaluate(condition, LEAF_EVIDENCE) is expected


@pytest.mark.parametrize(
    ("part", "expected"),
    [pytest.param(T, F, id="T->F"), pytest.param(F, T, id="F->T"), pytest.param(U, U, id="U->U")],
)
def test_not_swaps_true_and_false_and_keeps_unknown(
    part: bool | None, expected: bool | None
) -> None:
    assert evaluate(Not(LEAVES[part]), LEAF_EVIDENCE) is expected


# --- evidence that is NULL or not an object ------------------------------------------------

PRESENT = {"s": 1}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        pytest.param(Comparison("s", "==", 1), U, id="comparison"),
        pytest.param(Comparison("s", "not_in", (2,)), U, id="not_in"),
        pytest.param(Not(Comparison("s", "==", 1)), U, id="not"),
        pytest.param(AllOf(()), T, id="empty-all-compares-nothing"),
        pytest.param(AnyOf(()), F, id="empty-any-compares-nothing"),
        pytest.param(AllOf((Comparison("s", "==", 1), AnyOf(()))), F, id="all-with-false-part"),
    ],
)
@pytest.mark.parametrize(
    "evidence",
    [
        pytest.param(None, id="null-evidence"),
        pytest.param([PRESENT], id="list-evidence"),
        pytest.param('{"s": 1}', id="string-evidence"),
        pytest.param(1, id="number-evidence"),
        pytest.param(True, id="boolean-evidence"),
    ],
)
def test_evidence_that_is_not_an_object_makes_every_comparison_unknown(
    condition: Condition, expected: bool | None, evidence: object
) -> None:
    assert evaluate(condition, PRESENT) is not None  # known on real evidence
    assert evaluate(condition, evidence) is expected


# --- explain -------------------------------------------------------------------------------

A1 = Comparison("a", "==", 1)
B1 = Comparison("b", "==", 1)
C1 = Comparison("c", "==", 1)


@pytest.mark.parametrize(
    ("condition", "evidence", "expected", "unknowns"),
    [
        pytest.param(A1, {"a": 1}, T, [], id="known-true-lists-nothing"),
        pytest.param(A1, {"a": 2}, F, [], id="known-false-lists-nothing"),
        pytest.param(A1, {}, U, [("a", "absent")], id="absent"),
        pytest.param(A1, {"a": None}, U, [("a", "null")], id="null"),
        pytest.param(A1, {"a": "1"}, U, [("a", "type_mismatch")], id="mistyped"),
        pytest.param(A1, {"a": True}, U, [("a", "type_mismatch")], id="boolean-for-number"),
        pytest.param(
            Comparison("a", "<", "z"), {"a": "b"}, U, [("a", "type_mismatch")], id="ordered-string"
        ),
        pytest.param(A1, {"a": math.nan}, U, [("a", "not_a_number")], id="nan"),
        pytest.param(A1, {"a": -math.inf}, U, [("a", "not_a_number")], id="infinity"),
        pytest.param(A1, {"a": [1]}, U, [("a", "bad_value")], id="list-value"),
        pytest.param(
            Comparison("a", "in", (1,)), {"a": {"x": 1}}, U, [("a", "bad_value")], id="dict-in"
        ),
        pytest.param(
            AllOf((A1, B1)), None, U, [("a", "no_evidence"), ("b", "no_evidence")], id="null-ev"
        ),
        pytest.param(AllOf((A1, B1)), [1], U, [("a", "not_an_object"), ("b", "not_an_object")],
                     id="list-evidence"),
        pytest.param(AllOf((A1, Comparison("a", "==", 2))), {}, U, [("a", "absent")],
                     id="deduplicated"),
        pytest.param(AnyOf((B1, A1, Comparison("b", "==", 2))), {}, U,
                     [("b", "absent"), ("a", "absent")], id="order-of-first-appearance"),
        pytest.param(AllOf((A1, B1)), {"a": 1, "b": None}, U, [("b", "null")],
                     id="only-the-unknown-signal"),
        pytest.param(AllOf((A1, B1)), {"b": 2}, F, [], id="false-all-ignores-unknown-part"),
        pytest.param(AnyOf((A1, B1)), {"b": 1}, T, [], id="true-any-ignores-unknown-part"),
        pytest.param(AnyOf((A1, AllOf((B1, C1)))), {"c": 2}, U, [("a", "absent")],
                     id="unknown-inside-false-part-did-not-contribute"),
        pytest.param(Not(AnyOf((A1, B1))), {"a": "x", "b": 2}, U, [("a", "type_mismatch")],
                     id="through-not"),
    ],
)  # fmt: skip
def test_explain_names_the_signals_that_made_the_result_unknown(
    condition: Condition,
    evidence: object,
    expected: bool | None,
    unknowns: list[tuple[str, str]],
) -> None:
    result, unknown_signals = explain(condition, evidence)
    assert result is expected
    assert [(u.signal, u.problem) for u in unknown_signals] == unknowns


def test_unknown_signal_to_json() -> None:
    assert UnknownSignal("a", "absent").to_json() == {"signal": "a", "problem": "absent"}


# --- parsing -------------------------------------------------------------------------------

SIGNAL_64 = "a" * 64
SIGNAL_65 = "a" * 65


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"signal": "a", "op": "==", "value": 1}, Comparison("a", "==", 1), id="eq"),
        pytest.param({"signal": "a_1", "op": "!=", "value": "x"}, Comparison("a_1", "!=", "x"),
                     id="string-value"),
        pytest.param({"signal": "a", "op": "==", "value": False}, Comparison("a", "==", False),
                     id="boolean-value"),
        pytest.param({"signal": "a", "op": "<", "value": -2.5}, Comparison("a", "<", -2.5),
                     id="float-value"),
        pytest.param({"signal": SIGNAL_64, "op": ">", "value": 0}, Comparison(SIGNAL_64, ">", 0),
                     id="64-char-signal"),
        pytest.param({"signal": "a", "op": "in", "value": [1, "x", True, 2.5]},
                     Comparison("a", "in", (1, "x", True, 2.5)), id="mixed-in-list"),
        pytest.param({"signal": "a", "op": "not_in", "value": ["x"]},
                     Comparison("a", "not_in", ("x",)), id="not_in"),
        pytest.param({"all": []}, AllOf(()), id="empty-all"),
        pytest.param({"any": []}, AnyOf(()), id="empty-any"),
        pytest.param({"not": {"all": [{"any": []}]}}, Not(AllOf((AnyOf(()),))), id="nested"),
    ],
)  # fmt: skip
def test_parse_accepts_every_form_of_the_contract(raw: object, expected: Condition) -> None:
    parsed = parse_condition(raw)
    assert parsed == expected
    assert json.dumps(condition_to_json(parsed)) == json.dumps(raw)


def _comparison(**changes: object) -> dict[str, object]:
    return {"signal": "a", "op": "==", "value": 1, **changes}


PARSE_ERRORS = [
    pytest.param(_comparison(op="=~"), 'condition.op: unknown operator "=~"', id="unknown-op"),
    pytest.param({"all": [_comparison(), _comparison(op="=~")]},
                 'condition.all[1].op: unknown operator "=~"', id="unknown-op-nested"),
    pytest.param(_comparison(op="==\n"), r'condition.op: unknown operator "==\n"',
                 id="op-with-newline-escaped"),
    pytest.param(_comparison(op="IN"), 'condition.op: unknown operator "IN"', id="op-is-exact"),
    pytest.param(_comparison(op=1), "condition.op: expected a string, got number",
                 id="op-not-a-string"),
    pytest.param(_comparison(signal="Abc"),
                 'condition.signal: signal name "Abc" does not match ^[a-z][a-z0-9_]{0,63}$',
                 id="signal-uppercase"),
    pytest.param(_comparison(signal="a-b"),
                 'condition.signal: signal name "a-b" does not match ^[a-z][a-z0-9_]{0,63}$',
                 id="signal-hyphen"),
    pytest.param(_comparison(signal="abc\n"),
                 r'condition.signal: signal name "abc\n" does not match ^[a-z][a-z0-9_]{0,63}$',
                 id="signal-trailing-newline"),
    pytest.param(_comparison(signal=SIGNAL_65),
                 f'condition.signal: signal name "{SIGNAL_65}" does not match '
                 "^[a-z][a-z0-9_]{0,63}$", id="signal-65-chars"),
    pytest.param(_comparison(signal="1a"),
                 'condition.signal: signal name "1a" does not match ^[a-z][a-z0-9_]{0,63}$',
                 id="signal-leading-digit"),
    pytest.param(_comparison(signal=""),
                 'condition.signal: signal name "" does not match ^[a-z][a-z0-9_]{0,63}$',
                 id="signal-empty"),
    pytest.param(_comparison(signal=None), "condition.signal: expected a string, got null",
                 id="signal-null"),
    pytest.param({"not": {"any": [_comparison(signal="X")]}},
                 'condition.not.any[0].signal: signal name "X" does not match '
                 "^[a-z][a-z0-9_]{0,63}$", id="signal-nested-path"),
    pytest.param(_comparison(extra=1), 'condition: unexpected key "extra"', id="extra-key"),
    pytest.param(_comparison(x=1, y=2), 'condition: unexpected keys "x", "y"', id="extra-keys"),
    pytest.param({"all": [], "any": []}, 'condition: unexpected key "any"', id="all-and-any"),
    pytest.param({"not": _comparison(), "op": "=="}, 'condition: unexpected key "not"',
                 id="not-with-comparison-key"),
    pytest.param({"all": [], "note": "x"}, 'condition: unexpected key "note"', id="all-extra"),
    pytest.param({"signal": "a", "op": "=="}, 'condition: missing key "value"',
                 id="missing-value"),
    pytest.param({"op": "=="}, 'condition: missing keys "signal", "value"', id="missing-keys"),
    pytest.param({}, 'condition: expected the keys "signal", "op" and "value", or one of "all", '
                 '"any" or "not", got an empty object', id="empty-object"),
    pytest.param({"every": []}, 'condition: expected the keys "signal", "op" and "value", or one '
                 'of "all", "any" or "not", got keys "every"', id="unknown-form"),
    pytest.param(_comparison(op="in", value=[]), 'condition.value: the list for "in" must not be '
                 "empty", id="empty-in-list"),
    pytest.param(_comparison(op="not_in", value=[]), 'condition.value: the list for "not_in" must '
                 "not be empty", id="empty-not_in-list"),
    pytest.param(_comparison(op="in", value=1), 'condition.value: "in" needs a non-empty list, '
                 "got number", id="in-with-scalar"),
    pytest.param(_comparison(op="in", value=[1, 2, None]),
                 "condition.value[2]: expected a number, string or boolean, got null",
                 id="null-in-list"),
    pytest.param(_comparison(op="in", value=[[1]]),
                 "condition.value[0]: expected a number, string or boolean, got list",
                 id="nested-list-in-list"),
    pytest.param(_comparison(value=[1]),
                 'condition.value: a list is allowed only for "in" and "not_in", not for "=="',
                 id="list-for-eq"),
    pytest.param(_comparison(op="<", value=[]),
                 'condition.value: a list is allowed only for "in" and "not_in", not for "<"',
                 id="empty-list-for-lt"),
    pytest.param(_comparison(value={"a": 1}),
                 "condition.value: expected a number, string or boolean, got object",
                 id="dict-value"),
    pytest.param(_comparison(value=None),
                 "condition.value: expected a number, string or boolean, got null",
                 id="null-value"),
    pytest.param(_comparison(value=math.nan), "condition.value: expected a finite number, got nan",
                 id="nan-value"),
    pytest.param(_comparison(value=math.inf), "condition.value: expected a finite number, got inf",
                 id="infinite-value"),
    pytest.param({"all": {}}, "condition.all: expected a list, got object", id="all-not-a-list"),
    pytest.param({"any": "x"}, "condition.any: expected a list, got string", id="any-not-a-list"),
    pytest.param({"any": [_comparison(), _comparison(), []]},
                 "condition.any[2]: expected an object, got list", id="part-not-an-object"),
    pytest.param({"not": [_comparison()]}, "condition.not: expected an object, got list",
                 id="not-of-a-list"),
    pytest.param({"not": None}, "condition.not: expected an object, got null", id="not-of-null"),
    pytest.param([], "condition: expected an object, got list", id="top-level-list"),
    pytest.param("a == 1", "condition: expected an object, got string", id="top-level-string"),
    pytest.param(None, "condition: expected an object, got null", id="top-level-null"),
    pytest.param(True, "condition: expected an object, got boolean", id="top-level-boolean"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), PARSE_ERRORS)
def test_parse_refuses_anything_else_saying_where_and_what(raw: object, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(raw)
    assert str(caught.value) == message
    assert f"{caught.value.path}: {caught.value.problem}" == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{", "condition: not valid JSON: Expecting property name enclosed in double "
                     "quotes: line 1 column 2 (char 1)", id="truncated"),
        pytest.param("", "condition: not valid JSON: Expecting value: line 1 column 1 (char 0)",
                     id="empty"),
        pytest.param('{"signal": "a", "op": "==", "value": NaN}',
                     "condition: not valid JSON: NaN is not a JSON number", id="nan"),
        pytest.param('{"signal": "a", "op": "<", "value": Infinity}',
                     "condition: not valid JSON: Infinity is not a JSON number", id="infinity"),
        pytest.param('{"signal": "a", "op": ">", "value": -Infinity}',
                     "condition: not valid JSON: -Infinity is not a JSON number", id="-infinity"),
        pytest.param('{"signal": "a", "op": "==", "value": 1, "op": "!="}',
                     'condition: not valid JSON: duplicate key "op"', id="duplicate-key"),
        pytest.param(b"\xff", "condition: not valid JSON: 'utf-8' codec can't decode byte 0xff "
                     "in position 0: invalid start byte", id="bad-utf8"),
        pytest.param('{"all": [{"signal": "a", "op": "=~", "value": 1}]}',
                     'condition.all[0].op: unknown operator "=~"', id="parses-then-checks"),
    ],
)  # fmt: skip
def test_parse_json_refuses_text_that_is_not_json(text: str | bytes, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition_json(text)
    assert str(caught.value) == message


def test_parse_json_accepts_text_and_bytes() -> None:
    text = '{"any": [{"signal": "a", "op": "in", "value": [1, "b"]}]}'
    expected = AnyOf((Comparison("a", "in", (1, "b")),))
    assert parse_condition_json(text) == expected
    assert parse_condition_json(text.encode()) == expected


def test_path_names_the_rule_version_when_given() -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition({"all": [_comparison(op="~")]}, path="spam_burst@7.condition")
    assert caught.value.path == "spam_burst@7.condition.all[0].op"


def _nested_not(levels: int) -> object:
    raw: object = _comparison()
    for _ in range(levels):
        raw = {"not": raw}
    return raw


def test_nesting_up_to_max_depth_parses() -> None:
    parsed = parse_condition(_nested_not(MAX_DEPTH - 1))  # MAX_DEPTH conditions in all
    assert evaluate(parsed, {"a": 1}) is (MAX_DEPTH % 2 == 1)


def test_nesting_beyond_max_depth_is_refused_with_a_path() -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(_nested_not(MAX_DEPTH))
    assert caught.value.path == "condition" + ".not" * MAX_DEPTH
    assert caught.value.problem == f"nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"not": ' * 100_000 + "{}" + "}" * 100_000, id="deep-objects"),
        pytest.param("[" * 100_000, id="deep-lists-unclosed"),
        pytest.param('{"all": [' * 50_000 + "]}" * 50_000, id="deep-all"),
    ],
)
def test_hostile_nesting_is_a_condition_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition_json(text)


def test_hostile_nesting_of_decoded_objects_is_refused() -> None:
    with pytest.raises(ConditionError):
        parse_condition(_nested_not(100_000))


def test_condition_error_is_a_value_error_and_pickles() -> None:
    error = ConditionError("condition.op", 'unknown operator "=~"')
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problem, str(copy)) == (error.path, error.problem, str(error))


def test_signal_name_pattern_must_be_used_with_fullmatch() -> None:
    assert SIGNAL_NAME.fullmatch("abc") is not None
    assert SIGNAL_NAME.fullmatch("abc\n") is None


def test_signals_of_lists_every_compared_signal() -> None:
    condition = AllOf((A1, Not(AnyOf((B1, Comparison("a", "<", 3)))), AnyOf(())))
    assert signals_of(condition) == frozenset({"a", "b"})
    assert signals_of(AllOf(())) == frozenset()


def test_condition_to_json_writes_lists_for_in() -> None:
    condition = Not(Comparison("a", "not_in", (1, "x")))
    assert condition_to_json(condition) == {
        "not": {"signal": "a", "op": "not_in", "value": [1, "x"]}
    }


# --- laws, over random conditions and evidence ---------------------------------------------

SIGNAL_POOL = ("a", "b", "c")  # few names, so conditions and evidence meet
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([0.0, 1.0, -1.5, 2.5]),
    st.sampled_from(["", "x", "y"]),
)
scalar_lists = st.lists(scalars, min_size=1, max_size=4).map(tuple)


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    op = draw(st.sampled_from(sorted(OPERATORS)))
    value = draw(scalar_lists) if op in ("in", "not_in") else draw(scalars)
    return Comparison(draw(st.sampled_from(SIGNAL_POOL)), op, value)


conditions: st.SearchStrategy[Condition] = st.recursive(
    comparisons(),
    lambda parts: st.one_of(
        st.lists(parts, max_size=3).map(lambda ps: AllOf(tuple(ps))),
        st.lists(parts, max_size=3).map(lambda ps: AnyOf(tuple(ps))),
        parts.map(Not),
    ),
    max_leaves=8,
)
evidence_values = st.one_of(st.none(), scalars)
evidences = st.one_of(
    st.dictionaries(st.sampled_from(SIGNAL_POOL), evidence_values),  # a missing key is absent
    st.none(),
)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
any_evidence = st.one_of(
    json_like, st.dictionaries(st.sampled_from(SIGNAL_POOL), json_like, max_size=3)
)


def not3(truth: bool | None) -> bool | None:
    return None if truth is None else not truth


@given(conditions, evidences)
def test_not_not_is_the_condition(condition: Condition, evidence: object) -> None:
    assert evaluate(Not(Not(condition)), evidence) is evaluate(condition, evidence)


@given(st.lists(conditions, max_size=4).map(tuple), evidences)
def test_de_morgan_not_all_is_any_not(parts: tuple[Condition, ...], evidence: object) -> None:
    negated_parts = tuple(Not(part) for part in parts)
    assert evaluate(Not(AllOf(parts)), evidence) is evaluate(AnyOf(negated_parts), evidence)


@given(st.lists(conditions, max_size=4).map(tuple), evidences)
def test_de_morgan_not_any_is_all_not(parts: tuple[Condition, ...], evidence: object) -> None:
    negated_parts = tuple(Not(part) for part in parts)
    assert evaluate(Not(AnyOf(parts)), evidence) is evaluate(AllOf(negated_parts), evidence)


@given(st.sampled_from(SIGNAL_POOL), scalar_lists, st.one_of(evidences, any_evidence))
def test_not_in_is_the_negation_of_in(
    signal: str, elements: tuple[Scalar, ...], evidence: object
) -> None:
    is_in = evaluate(Comparison(signal, "in", elements), evidence)
    assert evaluate(Comparison(signal, "not_in", elements), evidence) is not3(is_in)


@given(conditions)
def test_condition_to_json_round_trips(condition: Condition) -> None:
    as_json = condition_to_json(condition)
    text = json.dumps(as_json)
    # Dataclass equality says True == 1, so compare the JSON text as well.
    assert parse_condition(as_json) == condition
    assert json.dumps(condition_to_json(parse_condition_json(text))) == text


@settings(max_examples=300)
@given(conditions, st.one_of(evidences, any_evidence))
def test_evaluate_never_raises_and_explain_agrees(condition: Condition, evidence: object) -> None:
    result = evaluate(condition, evidence)
    explained, unknown_signals = explain(condition, evidence)
    assert explained is result
    assert (result is None) == bool(unknown_signals)
    assert len(set(unknown_signals)) == len(unknown_signals)
    assert {u.signal for u in unknown_signals} <= signals_of(condition)


# -- three-valued logic against a truth table written out by hand ------------------------

_T = {"signal": "t", "op": "==", "value": 1}  # true on TRUTH_EVIDENCE
_F = {"signal": "f", "op": "==", "value": 1}  # false
_U = {"signal": "gone", "op": "==", "value": 1}  # unknown: the signal is absent
TRUTH_EVIDENCE = {"t": 1, "f": 0}
_BY_NAME = {"T": _T, "F": _F, "U": _U}
_RESULT = {"T": True, "F": False, "U": None}
# Kleene's strong logic, as the contract states it (and SQL treats NULL).
AND_TABLE = {"TT": "T", "TF": "F", "TU": "U", "FT": "F", "FF": "F", "FU": "F",
             "UT": "U", "UF": "F", "UU": "U"}
OR_TABLE = {"TT": "T", "TF": "T", "TU": "T", "FT": "T", "FF": "F", "FU": "U",
            "UT": "T", "UF": "U", "UU": "U"}
NOT_TABLE = {"T": "F", "F": "T", "U": "U"}


@pytest.mark.parametrize("pair", sorted(AND_TABLE))
def test_all_and_any_follow_the_truth_table(pair: str) -> None:
    left, right = (_BY_NAME[p] for p in pair)
    both = parse_condition({"all": [left, right]})
    either = parse_condition({"any": [left, right]})
    assert evaluate(both, TRUTH_EVIDENCE) is _RESULT[AND_TABLE[pair]]
    assert evaluate(either, TRUTH_EVIDENCE) is _RESULT[OR_TABLE[pair]]


@pytest.mark.parametrize("value", sorted(NOT_TABLE))
def test_not_follows_the_truth_table(value: str) -> None:
    negated = parse_condition({"not": _BY_NAME[value]})
    assert evaluate(negated, TRUTH_EVIDENCE) is _RESULT[NOT_TABLE[value]]


def test_empty_all_is_true_and_empty_any_is_false() -> None:
    assert evaluate(parse_condition({"all": []}), {}) is True
    assert evaluate(parse_condition({"any": []}), {}) is False
