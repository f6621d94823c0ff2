-- name: reinstatement-incidents-keep-ids
-- An incident's id never changes: cases, notices and audit rows name it by its id
-- (sql/functions/reinstatement_refuse_incident_renumber.sql).
CREATE TRIGGER reinstatement_incidents_keep_ids
BEFORE UPDATE OF id ON reinstatement_incidents
FOR EACH ROW EXECUTE FUNCTION reinstatement_refuse_incident_renumber();
