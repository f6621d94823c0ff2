"""Bulk reads and writes the batch steps share, written once per database.

PostgreSQL takes a batch's ids as one array parameter and its rows as one JSON document
(json_to_recordset), so a statement stays short and psycopg parses it once; SQLite takes
IN lists and executemany. Statements that are costly to build are kept in a
`StatementCache`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Engine,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    insert,
    select,
    text,
    update,
)

from reinstatement.store.dialects import store_for
from reinstatement.store.verdict_sql import array as _array

IN_CHUNK = 5000  # ids per IN (...) list: well under SQLite's limit on bound variables


class StatementCache:
    """Statements built once and executed for each batch with named parameters (SQLAlchemy
    then compiles each once too), kept for the last few keys (incidents) a process used.
    Building one, conditions compiled to SQL and all, cost more of the flow's CPU than
    what Python does with a batch's rows."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._built: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        with self._lock:
            statement = self._built.get(key)
            if statement is not None:
                self._built.move_to_end(key)
                return statement
        statement = build()
        with self._lock:
            self._built[key] = statement
            while len(self._built) > self._size:
                self._built.popitem(last=False)
        return statement


def id_in(conn: Connection, column: Any, ids: Sequence[int]) -> Any:
    """`column IN ids`; on PostgreSQL as `= ANY(:array)`, one parameter.

    An IN list of thousands of placeholders makes a statement psycopg parses again on
    every execution (it caches only short ones): the scale benchmark found that parsing
    among the largest costs of verify and restore. An array keeps the statement short.
    """
    if store_for(conn).set_based_batches:
        return column == any_(_array(BigInteger, ids))
    return column.in_(ids)


def chunks(ids: Sequence[int], size: int = IN_CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def insert_many(conn: Connection, table: Any, rows: list[dict[str, Any]],
                 element_types: dict[str, Any]) -> None:
    """INSERT rows; on PostgreSQL as one INSERT ... SELECT FROM unnest(arrays).

    `element_types` names the columns written (others take their defaults) and the type
    of each; as an executemany, a batch's notices and unbans cost a statement each.
    """
    if not rows:
        return
    if not store_for(conn).set_based_batches:
        conn.execute(insert(table), [{name: row[name] for name in element_types}
                                     for row in rows])
        return
    source = _json_rows(rows, element_types)
    conn.execute(insert(table).from_select(
        list(element_types), select(*(source.c[name] for name in element_types))))

def _json_rows(rows: list[dict[str, Any]], types: dict[str, Any]) -> Any:
    """Rows as PostgreSQL's json_to_recordset(one JSON parameter) AS t(name type, ...).

    A batch's per-row values travel as ONE JSON document that the C encoder writes
    (datetimes as ISO 8601 text): psycopg dumps text arrays element by element through a
    regular expression, which cost verify more than a second per 5,000 cases in the scale
    benchmark (the reasons of each case are long text).
    """
    document = json.dumps([{name: row[name] for name in types} for row in rows],
                          default=_json_default)
    return func.json_to_recordset(cast(bindparam(None, document, type_=Text), JSON)
                                  ).table_valued(*[column(name, kind)
                                                   for name, kind in types.items()]
                                                 ).render_derived(with_types=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def update_many(conn: Connection, table: Any, rows: list[dict[str, Any]],
                 types: dict[str, Any], *, where: Sequence[Any] = (),
                 fixed: dict[str, Any] | None = None) -> int:
    """UPDATE each row (by its "id") with its own values; returns the rows changed.

    `types` names the per-row columns and their types (JSON columns travel as text and
    are cast back); `where` adds guards, `fixed` values the same for every row. On
    PostgreSQL it is one UPDATE ... FROM unnest(arrays); elsewhere an executemany.
    """
    if not rows:
        return 0
    fixed = fixed or {}
    if not store_for(conn).set_based_batches:
        statement = (
            update(table).where(table.c.id == bindparam("row_id"), *where)
            .values(**{name: bindparam(f"row_{name}") for name in types}, **fixed)
        )
        return conn.execute(statement, [
            {"row_id": row["id"], **{f"row_{name}": row[name] for name in types}}
            for row in rows
        ]).rowcount
    source = _json_rows(rows, {"id": BigInteger, **types})
    values = {name: source.c[name] for name in types}
    return conn.execute(
        update(table).where(table.c.id == source.c.id, *where).values(**values, **fixed)
    ).rowcount




def move_identities_past_ids(conn: Connection, tables: Sequence[str]) -> None:
    """After rows were written with explicit ids, make each table's next generated id
    come after them (PostgreSQL's identity sequences; SQLite takes the largest id + 1)."""
    if not store_for(conn).bulk_copy:
        return
    for table in tables:
        conn.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"))


def analyze_tables(engine: Engine, tables: Sequence[str]) -> None:
    """Give the planner statistics of freshly loaded tables (where it keeps them)."""
    if not store_for(engine).planner_statistics:
        return
    with engine.connect() as conn:
        conn.execute(text(f"ANALYZE {', '.join(tables)}"))
        conn.commit()
