-- name: reinstatement-refuse-incident-change
-- A case's or a notice's incident never changes: the triggers
-- reinstatement_{cases,notices}_incident_stays call this before an UPDATE of
-- `incident_id`, and it refuses a new value with SQLSTATE 23503. (The audit trail changes
-- not at all: reinstatement_audit_refuse_change.)
CREATE OR REPLACE FUNCTION reinstatement_refuse_incident_change()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NEW.incident_id IS DISTINCT FROM OLD.incident_id THEN
        RAISE EXCEPTION 'update on table "%": a row''s incident never changes', TG_TABLE_NAME
            USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END
$fn$;
