"""The platform tables we create match docs/platform-contract.md, read from that document.

The expectations are parsed from the contract's markdown tables, not copied from our
schema module, so the test fails if either the schema or the document moves. Every
column's type, nullability and default, every primary key, unique constraint, index and
foreign key is compared on the reflected database, on SQLite and on PostgreSQL.

One deliberate difference, documented in docs/guarantees.md ("Where the contract left
room"): on SQLite an id primary key is spelt INTEGER, because only INTEGER PRIMARY KEY is
SQLite's auto-numbered (64-bit) rowid.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    inspect,
)
from sqlalchemy.engine import Inspector

from reinstatement.store.engine import make_engine
from reinstatement.store.schema import create_platform
from tests.conftest import CONTRACT

# The platform team's own copy of the contract, named by whoever has one: the one test that
# reads it runs only when REINSTATE_PLATFORM_CONTRACT_COPY names a file, and skips otherwise.
# The suite itself reads nothing outside the project.
PLATFORMS_COPY_VARIABLE = "REINSTATE_PLATFORM_CONTRACT_COPY"


@dataclass
class ContractColumn:
    name: str
    type_name: str  # BIGINT, VARCHAR, INTEGER, TEXT, JSON, TIMESTAMPTZ
    length: int | None
    nullable: bool
    primary_key: bool
    unique: bool
    indexed: bool
    references: tuple[str, str] | None
    default: str | None


@dataclass
class ContractTable:
    name: str
    columns: list[ContractColumn] = field(default_factory=list)
    unique_together: list[tuple[str, ...]] = field(default_factory=list)


def parse_contract(path: Path = CONTRACT) -> dict[str, ContractTable]:
    text = path.read_text(encoding="utf-8")
    tables: dict[str, ContractTable] = {}
    current: ContractTable | None = None
    for line in text.splitlines():
        heading = re.fullmatch(r"#{2,3} (\w+)", line.strip())
        if heading:
            name = heading.group(1)
            current = tables.setdefault(name, ContractTable(name)) if name.islower() else None
            continue
        if current is None or not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "column":
            continue
        column_name, type_text, meaning = cells[0], cells[1], cells[2]
        current.columns.append(_parse_column(column_name, type_text))
        together = re.search(r"unique together with (\w+)", meaning)
        if together:
            current.unique_together.append((together.group(1), column_name))
    assert set(tables) == {"accounts", "pins", "rule_versions", "enforcement_actions"}, tables
    return tables


def _parse_column(name: str, type_text: str) -> ContractColumn:
    upper = type_text.upper()
    if upper.startswith("TIMESTAMP WITH TIME ZONE"):
        type_name, length = "TIMESTAMPTZ", None
    else:
        match = re.match(r"(\w+)(?:\((\d+)\))?", type_text)
        assert match, type_text
        type_name = match.group(1).upper()
        length = int(match.group(2)) if match.group(2) else None
    references = re.search(r"references (\w+)\((\w+)\)", type_text)
    default = re.search(r"default ('[^']*')", type_text)
    primary_key = "primary key" in type_text
    return ContractColumn(
        name=name,
        type_name=type_name,
        length=length,
        nullable=not (primary_key or "NOT NULL" in type_text),
        primary_key=primary_key,
        unique=bool(re.search(r"(^|, )unique($|,)", type_text)),
        indexed="indexed" in type_text,
        references=(references.group(1), references.group(2)) if references else None,
        default=default.group(1) if default else None,
    )


def _expected_type(column: ContractColumn, dialect: str) -> tuple[type, dict[str, Any]]:
    if column.type_name == "BIGINT":
        if dialect == "sqlite" and column.primary_key:
            return Integer, {}
        return BigInteger, {}
    if column.type_name == "INTEGER":
        return Integer, {}
    if column.type_name == "VARCHAR":
        return String, {"length": column.length}
    if column.type_name == "TEXT":
        return Text, {}
    if column.type_name == "JSON":
        return JSON, {}
    if column.type_name == "TIMESTAMPTZ":
        return DateTime, {"timezone": True} if dialect == "postgresql" else {}
    raise AssertionError(f"contract type {column.type_name} not understood")


def _check_type(reflected: Any, column: ContractColumn, dialect: str) -> None:
    expected_class, attributes = _expected_type(column, dialect)
    where = f"{column.name}: reflected {reflected!r}"
    assert isinstance(reflected, expected_class), where
    # BIGINT is an Integer subclass; INTEGER must not be a BIGINT and vice versa.
    if expected_class is Integer:
        assert not isinstance(reflected, BigInteger), where
    if expected_class is String:
        assert not isinstance(reflected, Text), where
    for attribute, value in attributes.items():
        assert getattr(reflected, attribute) == value, f"{where}: {attribute}"


def test_contract_parses_into_four_tables() -> None:
    tables = parse_contract()
    assert [c.name for c in tables["pins"].columns] == [
        "id", "account_id", "title", "status", "hidden_by_action_id", "updated_at",
    ]
    assert tables["rule_versions"].unique_together == [("rule_name", "version")]
    locale = next(c for c in tables["accounts"].columns if c.name == "locale")
    assert (locale.length, locale.nullable, locale.default) == (35, False, "'en'")


@pytest.fixture
def platform_inspector(empty_db_url: str) -> Any:
    engine = make_engine(empty_db_url)
    create_platform(engine)
    engine.dispose()
    # A plain engine: reflection must not lean on anything our own engine set up.
    plain = create_engine(empty_db_url)
    with plain.connect() as conn:
        yield inspect(conn), conn.dialect.name
    plain.dispose()


def test_platform_schema_matches_contract(platform_inspector: tuple[Inspector, str]) -> None:
    inspector, dialect = platform_inspector
    contract = parse_contract()
    assert set(inspector.get_table_names()) == set(contract)
    for table in contract.values():
        _check_table(inspector, dialect, table)


def _check_table(inspector: Inspector, dialect: str, table: ContractTable) -> None:
    reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
    assert list(reflected) == [c.name for c in table.columns], table.name
    for column in table.columns:
        got = reflected[column.name]
        _check_type(got["type"], column, dialect)
        assert got["nullable"] == column.nullable, f"{table.name}.{column.name} nullable"
        default = got.get("default")
        if column.default is None:
            # Only the id may carry a database default: the identity that numbers rows.
            assert default is None or column.primary_key, f"{table.name}.{column.name}"
        else:
            assert default is not None and column.default in str(default), column.name

    primary_key = inspector.get_pk_constraint(table.name)["constrained_columns"]
    assert primary_key == [c.name for c in table.columns if c.primary_key], table.name

    expected_unique = {(c.name,) for c in table.columns if c.unique}
    expected_unique |= {tuple(u) for u in table.unique_together}
    unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
    indexes = inspector.get_indexes(table.name)
    unique_indexes = {
        tuple(i["column_names"]) for i in indexes
        if i["unique"] and not i.get("duplicates_constraint")
    }
    assert unique | unique_indexes == expected_unique, f"{table.name} unique"

    plain_indexes = {
        tuple(i["column_names"]) for i in indexes
        if not i["unique"] and not i.get("duplicates_constraint")
    }
    assert plain_indexes == {(c.name,) for c in table.columns if c.indexed}, table.name

    foreign_keys = {
        (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
        for fk in inspector.get_foreign_keys(table.name)
    }
    assert foreign_keys == {
        ((c.name,), c.references[0], (c.references[1],))
        for c in table.columns if c.references
    }, table.name


def test_create_platform_is_idempotent(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert create_platform(engine) == [
            "accounts", "rule_versions", "enforcement_actions", "pins",
        ]
        with engine.connect() as conn:
            before = _schema_snapshot(inspect(conn))
        assert create_platform(engine) == []
        with engine.connect() as conn:
            assert _schema_snapshot(inspect(conn)) == before
    finally:
        engine.dispose()


def _schema_snapshot(inspector: Inspector) -> dict[str, Any]:
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            sorted(str(i) for i in inspector.get_indexes(name)),
            sorted(str(f) for f in inspector.get_foreign_keys(name)),
        )
        for name in sorted(inspector.get_table_names())
    }


def _contract_terms(path: Path) -> dict[str, Any]:
    """What the two statements of the contract must agree on beyond the tables."""
    text = path.read_text(encoding="utf-8")
    operators = re.search(r"OP is one of ((?:`[^`]+`\s*)+)", text)
    assert operators, f"{path}: no operator list"
    return {
        "tables": parse_contract(path),
        "operators": re.findall(r"`([^`]+)`", operators.group(1)),
        "signal_pattern": re.search(r"NAME matches\s+`([^`]+)`", text).group(1),  # type: ignore[union-attr]
        "outcomes": re.findall(r"^\d\. `(\w+)`", text, flags=re.MULTILINE),
        "locale_fallback": bool(re.search(r"'pt-BR'\s+to\s+'pt'\s+to\s+'en'", text)),
    }


def test_project_contract_agrees_with_the_platform_teams_copy() -> None:
    """Given the platform team's copy (REINSTATE_PLATFORM_CONTRACT_COPY), our document must
    agree with it."""
    named = os.environ.get(PLATFORMS_COPY_VARIABLE)
    if not named:
        pytest.skip(f"{PLATFORMS_COPY_VARIABLE} names no copy of the platform's contract")
    copy = Path(named)
    assert copy.is_file(), f"{PLATFORMS_COPY_VARIABLE}={named}: no such file"
    ours, theirs = _contract_terms(CONTRACT), _contract_terms(copy)
    assert ours["outcomes"] == [
        "skipped", "upheld", "kept_other_ban", "needs_review", "reinstated",
    ]
    assert ours == theirs
