-- name: reinstatement-refuse-named-incident-delete
-- An incident that its cases, notices or audit rows name stays: the trigger
-- reinstatement_incidents_named_stay calls this once per deleting statement, with the
-- deleted rows as `deleted_incidents`, and it refuses the statement with SQLSTATE 23503
-- if one of them is named. A statement inserting such rows locks their incident first
-- (reinstatement_check_incident_named), so a delete waits for it and then sees them.
CREATE OR REPLACE FUNCTION reinstatement_refuse_named_incident_delete()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM deleted_incidents o
    WHERE EXISTS (SELECT 1 FROM reinstatement_cases c WHERE c.incident_id = o.id)
       OR EXISTS (SELECT 1 FROM reinstatement_notices n WHERE n.incident_id = o.id)
       OR EXISTS (SELECT 1 FROM reinstatement_audit a WHERE a.incident_id = o.id)
    LIMIT 1;
    IF named IS NOT NULL THEN
        RAISE EXCEPTION 'incident % is named by its cases, notices or audit trail and '
            'stays', named USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$;
