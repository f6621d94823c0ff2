-- name: reinstatement-cases-incident-stays
-- A row of reinstatement_cases never moves to another incident
-- (sql/functions/reinstatement_refuse_incident_change.sql).
CREATE TRIGGER reinstatement_cases_incident_stays
BEFORE UPDATE OF incident_id ON reinstatement_cases
FOR EACH ROW EXECUTE FUNCTION reinstatement_refuse_incident_change();
