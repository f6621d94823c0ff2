-- name: reinstatement-audit-refuse-change
-- The audit trail is append-only, at the database and not only in the pipeline's code:
-- the trigger reinstatement_audit_append_only calls this before every UPDATE or DELETE
-- of a row of reinstatement_audit, and it refuses. (SQLite has a trigger of its own per
-- kind of statement: sql/triggers/reinstatement_audit_no_*.sqlite.sql.) Its body is the
-- one migration 0001 created, indentation included.
CREATE OR REPLACE FUNCTION reinstatement_audit_refuse_change()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
            BEGIN
                RAISE EXCEPTION 'reinstatement_audit is append-only';
            END $fn$;
