-- name: reinstatement-audit-no-update
-- The audit trail is append-only on SQLite too: every UPDATE of an audit row is refused.
-- (PostgreSQL: reinstatement_audit_append_only.postgresql.sql.)
CREATE TRIGGER reinstatement_audit_no_update BEFORE UPDATE ON reinstatement_audit
BEGIN
    SELECT RAISE(ABORT, 'reinstatement_audit is append-only');
END;
