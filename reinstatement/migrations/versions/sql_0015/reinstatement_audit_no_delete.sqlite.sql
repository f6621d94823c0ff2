-- name: reinstatement-audit-no-delete
-- The audit trail is append-only on SQLite too: every DELETE of an audit row is refused.
-- (PostgreSQL: reinstatement_audit_append_only.postgresql.sql.)
CREATE TRIGGER reinstatement_audit_no_delete BEFORE DELETE ON reinstatement_audit
BEGIN
    SELECT RAISE(ABORT, 'reinstatement_audit is append-only');
END;
