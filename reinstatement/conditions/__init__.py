"""The rule condition language of the platform contract: parsing, serialising and evaluating.

A rule version's condition is JSON (see "The condition language" in PLATFORM.md), turned
into a small immutable tree and evaluated against a ban's evidence in the contract's
three-valued logic, where ``None`` stands for unknown. Plain Python: no database, no
Prefect (`condition_sql.py` compiles the same judgement to SQL). Where each part lives:

- `language.py`: the tree, parsing it with every refusal the contract makes
  (`ConditionError` says where and what), and writing it back as JSON;
- `evidence.py`: reading a ban's evidence exactly and without trusting it, what is not
  read at all, and the reasons a signal's comparison may be unknown;
- `evaluation.py`: the three-valued reference evaluator (`evaluate`, `explain`).
"""

from __future__ import annotations

from reinstatement.conditions.evaluation import UnknownSignal, evaluate, explain
from reinstatement.conditions.evidence import (
    ABSENT,
    BAD_VALUE,
    DUPLICATE_KEY,
    DUPLICATED,
    ESCAPE_PREFIX,
    EVIDENCE_TOO_DEEP,
    EVIDENCE_UNREADABLE,
    MAX_EVIDENCE_CHARS,
    MAX_EVIDENCE_DEPTH,
    NO_EVIDENCE,
    NOT_A_NUMBER,
    NOT_AN_OBJECT,
    NULL,
    OUT_OF_RANGE,
    TYPE_MISMATCH,
    UNKNOWN_PROBLEMS,
    UNREADABLE_ESCAPES,
    UNREADABLE_EXPONENT,
    UNREADABLE_FRACTION,
    UNREADABLE_FRACTION_DIGITS,
    UNREADABLE_TEXT,
    UnreadableEvidence,
    decode_evidence,
    evidence_depth,
    unreadable_text,
)
from reinstatement.conditions.language import (
    LARGEST_NUMBER,
    MAX_DEPTH,
    MAX_SCALE,
    OPERATORS,
    SIGNAL_NAME,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    ConditionError,
    Not,
    Scalar,
    condition_to_json,
    parse_condition,
    parse_condition_json,
    signals_of,
)

__all__ = [
    "ABSENT",
    "BAD_VALUE",
    "DUPLICATED",
    "DUPLICATE_KEY",
    "ESCAPE_PREFIX",
    "EVIDENCE_TOO_DEEP",
    "EVIDENCE_UNREADABLE",
    "LARGEST_NUMBER",
    "MAX_DEPTH",
    "MAX_EVIDENCE_CHARS",
    "MAX_EVIDENCE_DEPTH",
    "MAX_SCALE",
    "NOT_AN_OBJECT",
    "NOT_A_NUMBER",
    "NO_EVIDENCE",
    "NULL",
    "OPERATORS",
    "OUT_OF_RANGE",
    "SIGNAL_NAME",
    "TYPE_MISMATCH",
    "UNKNOWN_PROBLEMS",
    "UNREADABLE_ESCAPES",
    "UNREADABLE_EXPONENT",
    "UNREADABLE_FRACTION",
    "UNREADABLE_FRACTION_DIGITS",
    "UNREADABLE_TEXT",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "ConditionError",
    "Not",
    "Scalar",
    "UnknownSignal",
    "UnreadableEvidence",
    "condition_to_json",
    "decode_evidence",
    "evaluate",
    "evidence_depth",
    "explain",
    "parse_condition",
    "parse_condition_json",
    "signals_of",
    "unreadable_text",
]
