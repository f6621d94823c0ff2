-- name: reinstatement-audit-append-only
-- The audit trail is append-only: every UPDATE or DELETE of an audit row is refused
-- (sql/functions/reinstatement_audit_refuse_change.sql).
CREATE TRIGGER reinstatement_audit_append_only
BEFORE DELETE OR UPDATE ON reinstatement_audit
FOR EACH ROW EXECUTE FUNCTION reinstatement_audit_refuse_change();
