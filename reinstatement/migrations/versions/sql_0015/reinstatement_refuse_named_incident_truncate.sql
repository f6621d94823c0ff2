-- name: reinstatement-refuse-named-incident-truncate
-- The incidents are not truncated while cases, notices or audit rows exist (they name
-- their incidents): the trigger reinstatement_incidents_not_truncated calls this before a
-- TRUNCATE of reinstatement_incidents, and it refuses with SQLSTATE 23503.
CREATE OR REPLACE FUNCTION reinstatement_refuse_named_incident_truncate()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM reinstatement_cases) OR EXISTS (SELECT 1 FROM reinstatement_notices)
       OR EXISTS (SELECT 1 FROM reinstatement_audit) THEN
        RAISE EXCEPTION 'reinstatement_incidents is named by cases, notices or audit rows '
            'and is not truncated' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$;
