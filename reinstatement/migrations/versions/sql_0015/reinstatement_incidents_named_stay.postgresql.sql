-- name: reinstatement-incidents-named-stay
-- An incident that cases, notices or audit rows name is not deleted, checked once per
-- deleting statement (sql/functions/reinstatement_refuse_named_incident_delete.sql).
CREATE TRIGGER reinstatement_incidents_named_stay
AFTER DELETE ON reinstatement_incidents
REFERENCING OLD TABLE AS deleted_incidents
FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_refuse_named_incident_delete();
