"""Creating the platform tables (local runs only) and migrating the pipeline's own."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from reinstatement.platform_schema import create_platform_tables
from reinstatement.store import queries

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
VERSION_TABLE = "reinstatement_alembic_version"


# The foreign keys of `incident_id` on cases, notices and audit rows: on PostgreSQL they are
# checked once per statement by triggers instead (migration 0009), and the comparison of
# models and schema leaves them out on both databases (SQLite keeps them as declared).
CHECKED_PER_STATEMENT = frozenset({
    "fk_reinstatement_cases_incident_id_reinstatement_incidents",
    "fk_reinstatement_notices_incident_id_reinstatement_incidents",
    "fk_reinstatement_audit_incident_id_reinstatement_incidents",
})


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Only our own tables: the platform's are never created, altered or dropped."""
    if type_ == "table":
        return bool(name and name.startswith("reinstatement_"))
    if type_ == "foreign_key_constraint" and name in CHECKED_PER_STATEMENT:
        return False
    return True


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@cache
def head_revision() -> str:
    """The newest migration's revision. Read once a process: Alembic loads every migration
    file to find it, and the files a process runs with do not change under it."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def create_platform(engine: Engine) -> list[str]:
    """Create the platform tables that are missing (idempotent); returns what was created."""
    with engine.begin() as conn:
        return create_platform_tables(conn)


def upgrade_pipeline(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply the pipeline's migrations up to `revision`; returns (before, after)."""
    before = current_revision(engine)
    config = alembic_config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it; with foreign keys enforced, dropping the
            # old copy would fail for rows that reference it. Checks go off for the
            # migration (outside any transaction, where the pragma takes effect) and every
            # reference is verified before the migration commits.
            _driver_execute(conn, queries.sql(conn, "suspend_foreign_keys"))
        try:
            with conn.begin():
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
                if sqlite:
                    broken = conn.exec_driver_sql(
                        queries.sql(conn, "broken_references")).fetchall()
                    if broken:
                        raise RuntimeError(f"migration left broken references: {broken[:5]}")
        finally:
            if sqlite:
                _driver_execute(conn, queries.sql(conn, "enforce_foreign_keys"))
    return before, current_revision(engine) or ""


def _driver_execute(conn: Connection, statement: str) -> None:
    """Run a statement on the driver's connection, outside SQLAlchemy's transaction."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(statement)
