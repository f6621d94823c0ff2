"""The functions and triggers that migrations 0001 and 0009 wrote as strings come from files.

Migration 0001 made the audit trail append-only (a trigger and its function on PostgreSQL,
two triggers on SQLite) and migration 0009 checks the rows that name an incident once per
statement (five functions, seven triggers, PostgreSQL only), each from a string in its
migration. Their sources now live under `sql/` (`sql/README.md`), one file each, and this
revision creates each again from the pinned copy of its source under `sql_0015/`.

Nothing changes: every body, event, table and argument is the one in force at 0014 (a
function is replaced in place and keeps its owner and privileges; a trigger is dropped and
created again, in this revision's transaction), and
`tests/test_sql_sources.py` holds each object in a migrated database to its file.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PINNED = Path(__file__).resolve().parent / "sql_0015"
# PostgreSQL: the functions the triggers call, then each trigger's file and its table.
FUNCTIONS = (
    "reinstatement_audit_refuse_change.sql",
    "reinstatement_check_incident_named.sql",
    "reinstatement_refuse_incident_change.sql",
    "reinstatement_refuse_named_incident_delete.sql",
    "reinstatement_refuse_incident_renumber.sql",
    "reinstatement_refuse_named_incident_truncate.sql",
)
POSTGRESQL_TRIGGERS = {
    "reinstatement_audit_append_only.postgresql.sql": "reinstatement_audit",
    "reinstatement_audit_incident_named.postgresql.sql": "reinstatement_audit",
    "reinstatement_cases_incident_named.postgresql.sql": "reinstatement_cases",
    "reinstatement_cases_incident_stays.postgresql.sql": "reinstatement_cases",
    "reinstatement_notices_incident_named.postgresql.sql": "reinstatement_notices",
    "reinstatement_notices_incident_stays.postgresql.sql": "reinstatement_notices",
    "reinstatement_incidents_named_stay.postgresql.sql": "reinstatement_incidents",
    "reinstatement_incidents_keep_ids.postgresql.sql": "reinstatement_incidents",
    "reinstatement_incidents_not_truncated.postgresql.sql": "reinstatement_incidents",
}
SQLITE_TRIGGERS = {
    "reinstatement_audit_no_update.sqlite.sql": "reinstatement_audit",
    "reinstatement_audit_no_delete.sqlite.sql": "reinstatement_audit",
}


def _trigger_name(file_name: str) -> str:
    return file_name.split(".", 1)[0]


def upgrade() -> None:
    bind = op.get_bind()
    # Through the driver's own connection (same transaction), as migration 0012 does: the
    # bodies' % signs are PL/pgSQL's, not parameter markers.
    driver = bind.connection.driver_connection
    assert driver is not None
    if bind.dialect.name == "postgresql":
        schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
        driver.execute(f"SET LOCAL search_path = {schema}, pg_temp")
        for name in FUNCTIONS:
            driver.execute((PINNED / name).read_text(encoding="utf-8"))
        triggers = POSTGRESQL_TRIGGERS
    else:
        triggers = SQLITE_TRIGGERS
    for name, table in triggers.items():
        on_table = f" ON {table}" if bind.dialect.name == "postgresql" else ""
        driver.execute(f"DROP TRIGGER IF EXISTS {_trigger_name(name)}{on_table}")
        driver.execute((PINNED / name).read_text(encoding="utf-8"))
    if bind.dialect.name == "postgresql":
        driver.execute("RESET search_path")


def downgrade() -> None:
    # The functions and triggers are the ones revision 0014 had: nothing to undo.
    pass
