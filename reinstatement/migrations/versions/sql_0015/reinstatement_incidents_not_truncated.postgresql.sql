-- name: reinstatement-incidents-not-truncated
-- The incidents are not truncated while cases, notices or audit rows name them
-- (sql/functions/reinstatement_refuse_named_incident_truncate.sql).
CREATE TRIGGER reinstatement_incidents_not_truncated
BEFORE TRUNCATE ON reinstatement_incidents
FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_refuse_named_incident_truncate();
