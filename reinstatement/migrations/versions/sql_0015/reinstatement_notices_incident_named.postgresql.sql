-- name: reinstatement-notices-incident-named
-- A statement inserting rows into reinstatement_notices locks the incidents they name and
-- refuses them if one does not exist, once per statement in place of a foreign key
-- (sql/functions/reinstatement_check_incident_named.sql).
CREATE TRIGGER reinstatement_notices_incident_named
AFTER INSERT ON reinstatement_notices
REFERENCING NEW TABLE AS inserted_rows
FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_check_incident_named();
