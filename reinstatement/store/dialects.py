"""The seam between the two databases: what each can do, chosen once per dialect.

Code above the store layer never asks which database it talks to; it asks what the
database can do, by the name of what the pipeline relies on. SQLAlchemy's dialects do
the same with their `supports_*` flags. `store_for(bind)` returns the one `Store` for the
bind's dialect; a dialect the pipeline does not support is refused there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

Query = TypeVar("Query")


@dataclass(frozen=True)
class Store:
    name: str
    # SELECT ... FOR UPDATE takes row locks. SQLite has none: every transaction holds the
    # database's write lock from BEGIN IMMEDIATE (db.py), which serialises the same work.
    row_locks: bool
    # The platform owner's SQL functions (sql/functions/) are the only way to restore,
    # record a review or a decision, and compute a plan's digest; the pipeline's role may
    # not write those rows itself. SQLite has no functions: the same rules run as statements.
    owner_functions: bool
    # Locks held by a session (advisory locks): a claim or a run is gone the moment its
    # holder's session is. SQLite: the process's liveness and leases stand in.
    session_locks: bool
    # The database plans, judges and writes a batch in one set-based statement; SQLite's
    # batches are read, judged in Python (the reference) and written back.
    set_based_batches: bool
    # Several processes may write batches of one incident at once (SQLite: one writer).
    concurrent_writers: bool
    # Each person connects as their own database role, which names them.
    database_roles: bool
    # The planner keeps statistics that a bulk load leaves missing (see statistics.py).
    planner_statistics: bool
    # COPY ... FROM STDIN for bulk loads.
    bulk_copy: bool

    def locked(self, query: Query, **for_update: Any) -> Query:
        """`query` with FOR UPDATE (its options as given) where the database takes row
        locks; as it is where the transaction already holds the write lock."""
        if self.row_locks:
            return query.with_for_update(**for_update)  # type: ignore[attr-defined]
        return query


POSTGRESQL = Store("postgresql", row_locks=True, owner_functions=True, session_locks=True,
                   set_based_batches=True, concurrent_writers=True, database_roles=True,
                   planner_statistics=True, bulk_copy=True)
SQLITE = Store("sqlite", row_locks=False, owner_functions=False, session_locks=False,
               set_based_batches=False, concurrent_writers=False, database_roles=False,
               planner_statistics=False, bulk_copy=False)
_STORES = {store.name: store for store in (POSTGRESQL, SQLITE)}


def store_for(bind: Connection | Engine) -> Store:
    """The `Store` of the database `bind` talks to."""
    try:
        return _STORES[bind.dialect.name]
    except KeyError:
        raise ValueError(f"the pipeline runs on PostgreSQL or SQLite, not "
                         f"{bind.dialect.name}") from None
