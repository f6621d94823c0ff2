-- name: reinstatement-notices-incident-stays
-- A row of reinstatement_notices never moves to another incident
-- (sql/functions/reinstatement_refuse_incident_change.sql).
CREATE TRIGGER reinstatement_notices_incident_stays
BEFORE UPDATE OF incident_id ON reinstatement_notices
FOR EACH ROW EXECUTE FUNCTION reinstatement_refuse_incident_change();
