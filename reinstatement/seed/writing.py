"""Writing the seeded rows: only into an empty platform, in one transaction, with COPY
on PostgreSQL and batched INSERTs on SQLite (meant for small local incidents).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from reinstatement.platform_schema import (
    accounts,
    enforcement_actions,
    pins,
    rule_versions,
)
from reinstatement.seed.incident import RULE_VERSIONS, rule_version_rows
from reinstatement.seed.platform_rows import AccountRows, SeedOptions, generate
from reinstatement.seed.shapes import expected_outcome
from reinstatement.store import store_for
from reinstatement.store.bulk import analyze_tables, move_identities_past_ids


@dataclass
class SeedSummary:
    accounts: int = 0
    enforcement_actions: int = 0
    pins: int = 0
    rule_versions: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    expected_outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class PlatformNotEmptyError(ValueError):
    """The seed only writes into an empty platform, so it can never mix with real rows."""


ACCOUNT_COLUMNS = ("id", "username", "display_name", "email", "locale", "status", "updated_at")
ACTION_COLUMNS = ("id", "account_id", "kind", "source", "rule_version_id", "actor", "reason",
                  "evidence", "created_at", "reversed_at", "reversed_by_action_id")
PIN_COLUMNS = ("id", "account_id", "title", "status", "hidden_by_action_id", "updated_at")

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")).translate(_COPY_ESCAPES)
    return str(value)


def copy_line(row: Iterable[Any]) -> str:
    """One row as a line of COPY's text format (the detection history writes with it too)."""
    return "\t".join(map(_copy_field, row)) + "\n"


def assert_platform_empty(conn: Connection) -> None:
    """Refuse a platform that already holds rows (PlatformNotEmptyError)."""
    for table in (accounts, enforcement_actions, pins, rule_versions):
        if conn.execute(select(func.count()).select_from(table)).scalar_one():
            raise PlatformNotEmptyError(
                f"the platform table {table.name!r} already holds rows: the seed writes only "
                "into an empty platform database (create a new one, then `reinstate db "
                "create-platform`)"
            )


class _PostgresCopyWriter:
    """Streams rows to three COPY statements at once through three connections' buffers.

    COPY needs one statement per table at a time on a connection; rather than holding
    all rows in memory, the writer keeps text buffers per table and flushes each when it
    grows, COPYing into that table with the foreign keys already satisfied by earlier
    flushes (accounts before actions before pins).
    """

    def __init__(self, conn: Connection, batch_rows: int) -> None:
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.batch_rows = batch_rows
        self.buffers: dict[str, list[str]] = {"accounts": [], "enforcement_actions": [],
                                              "pins": []}
        self.columns = {"accounts": ACCOUNT_COLUMNS, "enforcement_actions": ACTION_COLUMNS,
                        "pins": PIN_COLUMNS}

    def add(self, rows: AccountRows) -> None:
        self.buffers["accounts"].append(copy_line(rows.account))
        self.buffers["enforcement_actions"].extend(map(copy_line, rows.actions))
        self.buffers["pins"].extend(map(copy_line, rows.pins))
        if len(self.buffers["pins"]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        for table in ("accounts", "enforcement_actions", "pins"):
            lines = self.buffers[table]
            if not lines:
                continue
            columns = ", ".join(self.columns[table])
            with self.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                copy.write("".join(lines))
            lines.clear()


class _InsertWriter:
    """Batched INSERTs, for SQLite (and any database without COPY)."""

    def __init__(self, conn: Connection, batch_rows: int) -> None:
        self.conn = conn
        self.batch_rows = batch_rows
        self.accounts: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.pins: list[dict[str, Any]] = []

    def add(self, rows: AccountRows) -> None:
        self.accounts.append(dict(zip(ACCOUNT_COLUMNS, rows.account, strict=True)))
        self.actions.extend(dict(zip(ACTION_COLUMNS, a, strict=True)) for a in rows.actions)
        self.pins.extend(dict(zip(PIN_COLUMNS, p, strict=True)) for p in rows.pins)
        if len(self.pins) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        for table, batch in ((accounts, self.accounts), (enforcement_actions, self.actions),
                             (pins, self.pins)):
            if batch:
                self.conn.execute(insert(table), batch)
                batch.clear()


def seed(engine: Engine, options: SeedOptions,
         progress: Callable[[int], None] | None = None) -> SeedSummary:
    """Write one synthetic incident into an empty platform database, in one transaction."""
    summary = SeedSummary()
    started = time.perf_counter()
    with engine.begin() as conn:
        assert_platform_empty(conn)
        conn.execute(insert(rule_versions), rule_version_rows())
        summary.rule_versions = len(RULE_VERSIONS)
        writer: _PostgresCopyWriter | _InsertWriter
        if store_for(conn).bulk_copy:
            writer = _PostgresCopyWriter(conn, options.batch_rows)
        else:
            writer = _InsertWriter(conn, max(1000, options.batch_rows // 10))
        for kind, rows in generate(options):
            writer.add(rows)
            summary.accounts += 1
            summary.enforcement_actions += len(rows.actions)
            summary.pins += len(rows.pins)
            summary.kinds[kind] += 1
            expected = expected_outcome(kind, options.shape)
            if expected is not None:
                summary.expected_outcomes[expected] += 1
            if progress is not None and summary.accounts % 10_000 == 0:
                progress(10_000)
        writer.flush()
        # Ids were given explicitly: the platform's next row (the pipeline's unban actions,
        # say) gets a fresh one.
        move_identities_past_ids(conn, ("accounts", "rule_versions", "enforcement_actions",
                                        "pins"))
    if options.analyze:
        analyze_tables(engine, ("accounts", "enforcement_actions", "pins", "rule_versions"))
    if progress is not None:
        progress(summary.accounts % 10_000)
    summary.seconds = time.perf_counter() - started
    return summary
