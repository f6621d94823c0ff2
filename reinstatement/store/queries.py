"""The pipeline's static SQL statements, each a named block of a file under sql/queries/.

A file holds aiosql-style blocks: `-- name: NAME`, a comment saying what the statement is
for, then the statement, up to the next `-- name:`. A statement that only one database
runs is named for it, `NAME.postgresql` or `NAME.sqlite`; `sql(bind, NAME)` gives the
block of `bind`'s database, else the plain `NAME`. Names are unique across the files.

The files are read once per process, at the first statement asked for; a malformed file,
a name given twice, or a name no file holds is a `QueryNotFound`/`QueryFileError` naming
the file and line, or the name. `reinstatement/store/sql_queries` is a link to the
repository's sql/queries, so the files ship as the package's data (pyproject.toml).
Statements assembled at run time stay in Python; sql/README.md lists them.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, Engine, TextClause, text

from reinstatement.store.dialects import store_for

QUERIES = Path(__file__).with_name("sql_queries")
DIALECTS = ("postgresql", "sqlite")
_NAME = re.compile(r"--\s*name:\s*(?P<name>\S+)\s*$")
_VALID_NAME = re.compile(rf"[a-z][a-z0-9_]*(\.({'|'.join(DIALECTS)}))?")


class QueryFileError(ValueError):
    """A file under sql/queries that does not hold named statements as they must be."""


class QueryNotFound(LookupError):
    """A statement asked for by a name no file under sql/queries holds."""


def parse(source: str, where: str) -> dict[str, str]:
    """The named statements of one file's text (`where`: its name, for errors)."""
    blocks: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    start = 0

    def close() -> None:
        if name is None:
            if any(line.strip() and not line.lstrip().startswith("--") for line in lines):
                raise QueryFileError(f"{where}: SQL before the first '-- name:'")
            return
        body = [line.rstrip() for line in lines]
        if not body or not body[0].lstrip().startswith("--"):
            raise QueryFileError(f"{where}:{start}: {name}: say what it is for in a comment "
                                 "under its name")
        while body and (not body[0].strip() or body[0].lstrip().startswith("--")):
            body.pop(0)
        statement = "\n".join(body).strip().removesuffix(";").rstrip()
        if not statement:
            raise QueryFileError(f"{where}:{start}: {name} holds no statement")
        if any(line.endswith(";") for line in statement.splitlines()):
            raise QueryFileError(f"{where}:{start}: {name} holds more than one statement")
        blocks[name] = statement

    for number, line in enumerate(source.splitlines(), 1):
        found = _NAME.match(line)
        if found is None:
            lines.append(line)
            continue
        close()
        name, lines, start = found["name"], [], number
        if not _VALID_NAME.fullmatch(name):
            raise QueryFileError(f"{where}:{number}: {name!r} is not a name (lower_case, "
                                 f"and a dialect's suffix if any: {', '.join(DIALECTS)})")
        if name in blocks:
            raise QueryFileError(f"{where}:{number}: {name} is named twice")
    close()
    return blocks


@cache
def statements() -> dict[str, str]:
    """Every named statement of sql/queries, read once per process."""
    found: dict[str, str] = {}
    where: dict[str, str] = {}
    paths = sorted(QUERIES.glob("*.sql"))
    if not paths:
        raise QueryFileError(f"no statements under {QUERIES} (sql/queries/*.sql)")
    for path in paths:
        for name, statement in parse(path.read_text(encoding="utf-8"), path.name).items():
            if name in found:
                raise QueryFileError(f"{name} is named in {where[name]} and in {path.name}")
            found[name], where[name] = statement, path.name
    return found


def sql(bind: Connection | Engine | str, name: str) -> str:
    """The statement `name` as the database of `bind` (or the dialect so named) runs it."""
    dialect = bind if isinstance(bind, str) else store_for(bind).name
    held = statements()
    for candidate in (f"{name}.{dialect}", name):
        if candidate in held:
            return held[candidate]
    raise QueryNotFound(f"no statement {name!r} for {dialect} under sql/queries: neither "
                        f"'-- name: {name}.{dialect}' nor '-- name: {name}' (sql/README.md)")


@cache
def _text(dialect: str, name: str) -> TextClause:
    return text(sql(dialect, name))


def statement(bind: Connection | Engine, name: str) -> TextClause:
    """The statement `name` for `bind`'s database, its bind parameters (:name) as written."""
    return _text(store_for(bind).name, name)
