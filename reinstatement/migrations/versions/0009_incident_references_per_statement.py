"""On PostgreSQL, the rows that name an incident are checked once per statement.

Cases, notices and audit rows each name their incident (`incident_id`). A foreign key
checked that row by row: a query and a lock of the incident's row for every one of them,
about 300,000 checks to reinstate 100,000 accounts, 8% of the processor time of plan,
verify and restore together (measured by dropping the three keys on a copy). The same
guarantees now hold per statement:

- a statement that inserts cases, notices or audit rows locks the incidents they name
  (FOR KEY SHARE, as a foreign key's check does, until its transaction ends) and refuses
  the rows, with SQLSTATE 23503 (foreign_key_violation), if one of them does not exist;
- a case's or a notice's incident never changes (the audit trail changes not at all);
- an incident that cases, notices or audit rows name cannot be deleted, truncated or
  given another id, also with 23503. The inserting statement's lock makes a delete wait
  until the inserting transaction ends, and the delete's check then sees its rows; a
  delete that came first makes the inserting statement find no incident, and fail.

The three foreign keys are dropped; every other foreign key stays. SQLite keeps all its
foreign keys (its checks are cheap, and dropping one means rebuilding the table): this
migration changes nothing there, and `schema_admin.include_object` leaves the three keys
out of the comparison of models and schema on both databases.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the foreign key of its incident_id dropped here
REFERENCES = {
    "reinstatement_cases": "fk_reinstatement_cases_incident_id_reinstatement_incidents",
    "reinstatement_notices": "fk_reinstatement_notices_incident_id_reinstatement_incidents",
    "reinstatement_audit": "fk_reinstatement_audit_incident_id_reinstatement_incidents",
}

CHECK_INSERTED = r"""
CREATE OR REPLACE FUNCTION reinstatement_check_incident_named() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    named bigint[];
    found integer;
BEGIN
    SELECT array_agg(DISTINCT r.incident_id) INTO named FROM inserted_rows r;
    IF named IS NULL THEN
        RETURN NULL;
    END IF;
    IF array_position(named, NULL) IS NOT NULL THEN
        RETURN NULL;  -- the column is NOT NULL: the insert has failed already
    END IF;
    -- Held until the transaction ends, as a foreign key's check holds it: no incident is
    -- deleted under rows that name it.
    PERFORM 1 FROM reinstatement_incidents i WHERE i.id = ANY (named) FOR KEY SHARE;
    GET DIAGNOSTICS found = ROW_COUNT;
    IF found <> cardinality(named) THEN
        RAISE EXCEPTION 'insert on table "%" names an incident that does not exist',
            TG_TABLE_NAME USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$
"""

REFUSE_MOVE = r"""
CREATE OR REPLACE FUNCTION reinstatement_refuse_incident_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.incident_id IS DISTINCT FROM OLD.incident_id THEN
        RAISE EXCEPTION 'update on table "%": a row''s incident never changes', TG_TABLE_NAME
            USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END
$fn$
"""

# Referenced by cases, notices or audit rows: the incident stays.
REFUSE_DELETE = r"""
CREATE OR REPLACE FUNCTION reinstatement_refuse_named_incident_delete() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM deleted_incidents o
    WHERE EXISTS (SELECT 1 FROM reinstatement_cases c WHERE c.incident_id = o.id)
       OR EXISTS (SELECT 1 FROM reinstatement_notices n WHERE n.incident_id = o.id)
       OR EXISTS (SELECT 1 FROM reinstatement_audit a WHERE a.incident_id = o.id)
    LIMIT 1;
    IF named IS NOT NULL THEN
        RAISE EXCEPTION 'incident % is named by its cases, notices or audit trail and '
            'stays', named USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$
"""

REFUSE_RENUMBER = r"""
CREATE OR REPLACE FUNCTION reinstatement_refuse_incident_renumber() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'incident %: its id never changes', OLD.id USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END
$fn$
"""

REFUSE_TRUNCATE = r"""
CREATE OR REPLACE FUNCTION reinstatement_refuse_named_incident_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM reinstatement_cases) OR EXISTS (SELECT 1 FROM reinstatement_notices)
       OR EXISTS (SELECT 1 FROM reinstatement_audit) THEN
        RAISE EXCEPTION 'reinstatement_incidents is named by cases, notices or audit rows '
            'and is not truncated' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for body in (CHECK_INSERTED, REFUSE_MOVE, REFUSE_DELETE, REFUSE_RENUMBER, REFUSE_TRUNCATE):
        op.execute(body)
    for table, key in REFERENCES.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {key}")
        op.execute(f"CREATE TRIGGER {table}_incident_named AFTER INSERT ON {table} "
                   "REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT "
                   "EXECUTE FUNCTION reinstatement_check_incident_named()")
        if table != "reinstatement_audit":  # append-only already
            op.execute(f"CREATE TRIGGER {table}_incident_stays BEFORE UPDATE OF incident_id "
                       f"ON {table} FOR EACH ROW "
                       "EXECUTE FUNCTION reinstatement_refuse_incident_change()")
    op.execute("CREATE TRIGGER reinstatement_incidents_named_stay AFTER DELETE ON "
               "reinstatement_incidents REFERENCING OLD TABLE AS deleted_incidents "
               "FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_refuse_named_incident_delete()")
    op.execute("CREATE TRIGGER reinstatement_incidents_keep_ids BEFORE UPDATE OF id ON "
               "reinstatement_incidents FOR EACH ROW "
               "EXECUTE FUNCTION reinstatement_refuse_incident_renumber()")
    op.execute("CREATE TRIGGER reinstatement_incidents_not_truncated BEFORE TRUNCATE ON "
               "reinstatement_incidents FOR EACH STATEMENT "
               "EXECUTE FUNCTION reinstatement_refuse_named_incident_truncate()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in ("reinstatement_incidents_named_stay", "reinstatement_incidents_keep_ids",
                 "reinstatement_incidents_not_truncated"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON reinstatement_incidents")
    for table, key in REFERENCES.items():
        op.execute(f"DROP TRIGGER IF EXISTS {table}_incident_named ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_incident_stays ON {table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {key} FOREIGN KEY (incident_id) "
                   "REFERENCES reinstatement_incidents (id)")
    for function in ("reinstatement_check_incident_named", "reinstatement_refuse_incident_change",
                     "reinstatement_refuse_named_incident_delete",
                     "reinstatement_refuse_incident_renumber",
                     "reinstatement_refuse_named_incident_truncate"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
