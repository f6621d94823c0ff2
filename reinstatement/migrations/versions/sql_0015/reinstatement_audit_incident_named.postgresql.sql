-- name: reinstatement-audit-incident-named
-- A statement inserting rows into reinstatement_audit locks the incidents they name and
-- refuses them if one does not exist, once per statement in place of a foreign key
-- (sql/functions/reinstatement_check_incident_named.sql).
CREATE TRIGGER reinstatement_audit_incident_named
AFTER INSERT ON reinstatement_audit
REFERENCING NEW TABLE AS inserted_rows
FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_check_incident_named();
