"""Every function and trigger of the pipeline is its file under sql/ (sql/README.md).

On a freshly migrated database (platform tables, then `reinstate db upgrade`), on both
databases:

- the pipeline's functions and triggers are exactly those `sql/` has files for: one
  without a file fails, and so does a file whose object no migration creates;
- each equals its file: the file is run again on the migrated database, in a transaction
  rolled back afterwards, and what the database then holds must be what it held before,
  as PostgreSQL renders it (`pg_get_functiondef`, `pg_get_triggerdef`) or, on SQLite, as
  `sqlite_master` keeps its text. A function is replaced in place (the file must replace
  the function of its name and create nothing else); a trigger is dropped and created
  again (the file must create the trigger of its name, on the same table).

And without a database: each file equals its newest pinned copy under
`reinstatement/migrations/versions/sql_NNNN/`, so a file edited without a migration that
runs it fails here, not only on a database migrated later.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from reinstatement.platform_schema import PLATFORM_TABLES
from reinstatement.store.engine import make_engine

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQL = PROJECT_ROOT / "sql"
VERSIONS = PROJECT_ROOT / "reinstatement" / "migrations" / "versions"
PREFIX = "reinstatement_"


def _files(backend: str) -> dict[tuple[str, str], Path]:
    """(kind, name) -> the file of each function and trigger of one database."""
    if backend == "postgresql":
        functions = {("function", p.stem): p for p in (SQL / "functions").glob("*.sql")}
        triggers = (SQL / "triggers").glob("*.postgresql.sql")
    else:
        functions = {}
        triggers = (SQL / "triggers").glob("*.sqlite.sql")
    return functions | {("trigger", p.name.split(".", 1)[0]): p for p in triggers}


# -- what a database holds ------------------------------------------------------------------

_PG_FUNCTIONS = """
SELECT p.oid, p.proname, p.oid::regprocedure::text AS signature,
       pg_get_functiondef(p.oid) AS definition
FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 3
"""
_PG_TRIGGERS = """
SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) AS definition, t.tgenabled
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace
ORDER BY 1, 2
"""


def _held(conn: Connection) -> dict[tuple[str, str], Any]:
    """(kind, name) -> how the database renders each function and trigger in the
    pipeline's schema (platform objects included: the caller tells them apart)."""
    held: dict[tuple[str, str], Any] = {}
    if conn.dialect.name == "postgresql":
        for _oid, name, signature, definition in conn.execute(text(_PG_FUNCTIONS)):
            # An overload would show as a second entry of the same name.
            held.setdefault(("function", name), []).append((signature, definition))
        for name, table, definition, enabled in conn.execute(text(_PG_TRIGGERS)):
            held.setdefault(("trigger", name), []).append((table, definition, enabled))
    else:
        for name, table, sql in conn.execute(text(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
                "ORDER BY name")):
            held.setdefault(("trigger", name), []).append((table, sql))
    return held


def _pipeline_objects(held: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """The pipeline's own: functions named reinstatement_*, triggers on its tables.

    Anything else is refused: the platform's tables are never altered by the pipeline
    (docs/platform-contract.md) and `reinstatement/platform_schema.py` creates no function
    or trigger, so an object outside the naming would be the pipeline's, misnamed."""
    pipeline: dict[tuple[str, str], Any] = {}
    others: list[tuple[str, str]] = []
    for (kind, name), entries in held.items():
        if kind == "function":
            owned = name.startswith(PREFIX)
        else:
            tables = {entry[0] for entry in entries}
            assert not tables & set(PLATFORM_TABLES), (
                f"trigger {name} on a platform table {sorted(tables)}: the pipeline never "
                "alters the platform's tables")
            owned = all(table.startswith(PREFIX) for table in tables)
        if owned:
            pipeline[(kind, name)] = entries
        else:
            others.append((kind, name))
    assert others == [], (
        f"{others}: not the pipeline's by name, and the platform's schema creates none")
    return pipeline


# -- a file run again ----------------------------------------------------------------------

def _run_file(conn: Connection, path: Path) -> None:
    """Run a file as the migrations run their pinned copies: through the driver's own
    connection (its % signs are PL/pgSQL's), on PostgreSQL with the schema first on the
    search path (a function's `SET search_path FROM CURRENT` captures it)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":
        schema = conn.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
        driver.execute(f"SET LOCAL search_path = {schema}, pg_temp")
        driver.execute(path.read_text(encoding="utf-8"))
        driver.execute("RESET search_path")
    else:
        driver.execute(path.read_text(encoding="utf-8"))


def _rerun_and_compare(conn: Connection, kind: str, name: str, path: Path) -> None:
    before = _held(conn)
    if kind == "trigger":
        ((table, *_),) = before[(kind, name)]
        on_table = f" ON {table}" if conn.dialect.name == "postgresql" else ""
        conn.exec_driver_sql(f"DROP TRIGGER {name}{on_table}")
    _run_file(conn, path)
    if kind == "function":
        # CREATE OR REPLACE writes a new version of the function's row: the ones this
        # transaction wrote are what the file replaced or created.
        touched = conn.execute(text(
            "SELECT p.proname FROM pg_proc p WHERE p.xmin = pg_current_xact_id()::xid "
            "ORDER BY 1")).scalars().all()
        assert touched == [name], f"{path.name} replaced or created {touched}, not {name}"
    after = _held(conn)
    assert after.get((kind, name)) == before[(kind, name)], (
        f"{kind} {name} in the database differs from {path.relative_to(PROJECT_ROOT)}:\n"
        f"database: {before[(kind, name)]}\nfile:     {after.get((kind, name))}")
    assert after == before, f"running {path.name} changed more than its {kind} {name}"


# -- the tests ------------------------------------------------------------------------------

def test_every_function_and_trigger_of_the_pipeline_has_its_file(db_url: str,
                                                               backend: str) -> None:
    """The database (the session's template: platform tables, then every migration) holds
    a function or trigger for each file of its dialect under sql/, and no other."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            pipeline = _pipeline_objects(_held(conn))
        files = _files(backend)
        without_file = sorted(set(pipeline) - set(files))
        without_object = sorted(set(files) - set(pipeline))
        assert without_file == [], (
            f"in the database but with no file under sql/ (sql/README.md): {without_file}")
        assert without_object == [], (
            f"a file under sql/ but nothing in a migrated database: {without_object}")
        overloaded = sorted(key for key, entries in pipeline.items() if len(entries) != 1)
        assert overloaded == [], f"more than one object of each name: {overloaded}"
        if backend == "postgresql":
            assert len(pipeline) >= 20  # 13 functions and 9 triggers at revision 0015
    finally:
        engine.dispose()


def test_each_function_and_trigger_equals_its_file(db_url: str, backend: str) -> None:
    engine = make_engine(db_url)
    try:
        files = _files(backend)
        assert files
        for (kind, name), path in sorted(files.items()):
            with engine.connect() as conn:
                transaction = conn.begin()
                try:
                    _rerun_and_compare(conn, kind, name, path)
                finally:
                    transaction.rollback()
    finally:
        engine.dispose()


def test_each_file_is_the_newest_pinned_copy_of_it() -> None:
    """A migration creates an object from its pinned copy, `sql_NNNN/FILE`; the newest
    copy of each file is the file, so a change to sql/ comes with the migration that
    makes it."""
    files = sorted((SQL / "functions").glob("*.sql")) + sorted((SQL / "triggers").glob("*.sql"))
    assert files
    for path in files:
        pinned = sorted(VERSIONS.glob(f"sql_*/{path.name}"))
        assert pinned, f"{path.name}: no migration creates it from a pinned copy"
        assert pinned[-1].read_bytes() == path.read_bytes(), (
            f"{path.relative_to(PROJECT_ROOT)} differs from its newest pinned copy "
            f"{pinned[-1].relative_to(PROJECT_ROOT)}: change it through a new migration "
            "with a pinned copy of its own")


@pytest.mark.parametrize("kind", ["function", "trigger"])
def test_the_files_are_named_for_what_they_create(kind: str) -> None:
    import re

    statement = {"function": r"CREATE OR REPLACE FUNCTION (\w+)\(",
                 "trigger": r"CREATE TRIGGER (\w+)\s"}[kind]
    folder = SQL / ("functions" if kind == "function" else "triggers")
    paths = sorted(folder.glob("*.sql"))
    assert paths
    for path in paths:
        content = path.read_text(encoding="utf-8")
        assert content.startswith("-- name: "), path.name
        created = re.findall(statement, content)
        assert created == [path.name.split(".", 1)[0]], (path.name, created)
        if kind == "trigger":
            assert path.name.endswith((".postgresql.sql", ".sqlite.sql")), path.name


# -- the static statements: sql/queries (reinstatement/store/queries.py) -----------------------

QUERIES = SQL / "queries"
PRODUCT = ("reinstatement", "tasks", "flows", "commands", "deployments")
# Compilers of conditions and verdicts: they build SQL from a condition, not a fixed text.
COMPILERS = {"reinstatement/store/condition_sql.py", "reinstatement/store/verdict_sql.py"}
# Statements assembled at run time around names the code holds, each listed in
# sql/README.md with why: (module, function) -> what is assembled.
DYNAMIC = {
    ("reinstatement/store/bulk.py", "move_identities_past_ids"): "the table's name",
    ("reinstatement/store/bulk.py", "analyze_tables"): "the tables' names",
    ("reinstatement/store/prepared_records.py", "_raw_record_sql"): "the columns recorded",
    ("reinstatement/seed/writing.py", "_PostgresCopyWriter.flush"): "the table and its columns",
    ("reinstatement/seed_history.py", "_Writer.flush"): "the table and its columns",
}
# What a statement starts with (a string of SQL, not prose: the words are upper case).
_STATEMENT = re.compile(
    r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|"
    r"ANALYZE|VACUUM|LOCK|TRUNCATE|CREATE|DROP|ALTER|GRANT|REVOKE|SET|RESET|EXPLAIN|CALL|"
    r"DO|NOTIFY|LISTEN|PREPARE|EXECUTE)\b")
_ASKS = {"sql", "statement"}  # queries.sql(bind, NAME), queries.statement(bind, NAME)


def _modules() -> list[Path]:
    return [path for folder in PRODUCT for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
            if "migrations" not in path.parts]


def _sql_literals_and_asked_names(path: Path) -> tuple[list[tuple[str, int, str]],
                                                        list[tuple[int, str | None]]]:
    """The strings of SQL in a module ((function, line, text); an f-string's holes as {})
    and the names it asks sql/queries for ((line, name); None when not a literal)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    literals: list[tuple[str, int, str]] = []
    asked: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, where: tuple[str, ...]) -> None:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            where = (*where, node.name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr in _ASKS and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "queries"):
            name = node.args[1] if len(node.args) == 2 else None
            asked.append((node.lineno, name.value if isinstance(name, ast.Constant)
                          and isinstance(name.value, str) else None))
        if isinstance(node, ast.JoinedStr):
            content = "".join(part.value if isinstance(part, ast.Constant) else "{}"
                              for part in node.values)
            if _STATEMENT.match(str(content)):
                literals.append((".".join(where), node.lineno, str(content)))
            return  # its parts are not strings of their own
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings and _STATEMENT.match(node.value)):
            literals.append((".".join(where), node.lineno, node.value))
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(tree, ())
    return literals, asked


def test_no_static_statement_is_left_in_the_code() -> None:
    """Every fixed statement of the product's code is a named block under sql/queries;
    what is left as a string of SQL is a compiler's, or assembled at run time (DYNAMIC)."""
    left: list[str] = []
    dynamic_found: set[tuple[str, str]] = set()
    for path in _modules():
        module = path.relative_to(PROJECT_ROOT).as_posix()
        if module in COMPILERS:
            continue
        for function, line, content in _sql_literals_and_asked_names(path)[0]:
            if (module, function) in DYNAMIC:
                dynamic_found.add((module, function))
            else:
                left.append(f"{module}:{line} ({function or 'module'}): {content[:60]!r}")
    assert left == [], (
        "static SQL in the code: move each statement into a named block under sql/queries "
        "and ask for it with queries.statement/queries.sql (sql/README.md):\n"
        + "\n".join(left))
    assert dynamic_found == set(DYNAMIC), (
        f"listed as dynamic but no longer there: {sorted(set(DYNAMIC) - dynamic_found)}")


def test_every_named_statement_is_asked_for_and_every_name_asked_is_there() -> None:
    from reinstatement.store import queries

    held = queries.statements()
    asked: dict[str, list[str]] = {}
    not_literal: list[str] = []
    for path in _modules():
        module = path.relative_to(PROJECT_ROOT).as_posix()
        for line, name in _sql_literals_and_asked_names(path)[1]:
            if name is None:
                not_literal.append(f"{module}:{line}")
            else:
                asked.setdefault(name, []).append(f"{module}:{line}")
    assert not_literal == [], (
        f"ask sql/queries for a statement by its name, written out, as "
        f"queries.statement(conn, 'name'): {not_literal}")
    assert asked, "nothing asks sql/queries for a statement: the scan is broken"
    missing = {name: where for name, where in asked.items()
               if not any(f"{name}.{dialect}" in held or name in held
                          for dialect in queries.DIALECTS)}
    assert missing == {}, f"asked for, but no '-- name:' block under sql/queries: {missing}"
    unused = sorted(name for name in held if name.split(".", 1)[0] not in asked)
    assert unused == [], f"named blocks under sql/queries that no code asks for: {unused}"


def test_the_named_statements_ship_with_the_package() -> None:
    """The package reads sql/queries through reinstatement/store/sql_queries, a link that
    its package data (pyproject.toml) carries into a built wheel."""
    import tomllib

    from reinstatement.store import queries

    assert queries.QUERIES.resolve() == QUERIES.resolve()
    assert sorted(p.name for p in queries.QUERIES.glob("*.sql")) == sorted(
        p.name for p in QUERIES.glob("*.sql"))
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "store/sql_queries/*.sql" in (
        pyproject["tool"]["setuptools"]["package-data"]["reinstatement"])


def test_each_queries_file_says_what_it_holds() -> None:
    paths = sorted(QUERIES.glob("*.sql"))
    assert paths
    for path in paths:
        content = path.read_text(encoding="utf-8")
        assert content.startswith("-- "), f"{path.name}: start with what the file is for"


@pytest.mark.parametrize(("source", "refusal"), [
    ("SELECT 1;\n-- name: a\n-- b\nSELECT 2;\n", "SQL before the first '-- name:'"),
    ("-- name: a\nSELECT 1;\n", "a: say what it is for"),
    ("-- name: a\n-- for\n", "a holds no statement"),
    ("-- name: a\n-- for\nSELECT 1;\nSELECT 2;\n", "a holds more than one statement"),
    ("-- name: A-b\n-- for\nSELECT 1;\n", "'A-b' is not a name"),
    ("-- name: a.mysql\n-- for\nSELECT 1;\n", "'a.mysql' is not a name"),
    ("-- name: a\n-- for\nSELECT 1;\n-- name: a\n-- for\nSELECT 2;\n", "a is named twice"),
])
def test_a_malformed_queries_file_is_refused_with_its_line(source: str, refusal: str) -> None:
    from reinstatement.store import queries

    with pytest.raises(queries.QueryFileError, match=re.escape(refusal)):
        queries.parse(source, "f.sql")


def test_a_statement_is_chosen_by_dialect_and_a_missing_one_named() -> None:
    from reinstatement.store import queries

    parsed = queries.parse("-- f\n\n-- name: a.sqlite\n-- for\n-- (two lines)\n"
                           "SELECT :x\n  FROM t;\n-- name: b\n-- for\nSELECT 2;\n", "f.sql")
    assert parsed == {"a.sqlite": "SELECT :x\n  FROM t", "b": "SELECT 2"}
    assert queries.sql("sqlite", "begin_immediate") == "BEGIN IMMEDIATE"
    with pytest.raises(queries.QueryNotFound, match=(
            r"no statement 'begin_immediate' for postgresql under sql/queries: neither "
            r"'-- name: begin_immediate.postgresql' nor '-- name: begin_immediate'")):
        queries.sql("postgresql", "begin_immediate")
