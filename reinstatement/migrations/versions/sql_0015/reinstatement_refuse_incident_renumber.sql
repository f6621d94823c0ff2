-- name: reinstatement-refuse-incident-renumber
-- An incident's id never changes (cases, notices and audit rows name it by its id): the
-- trigger reinstatement_incidents_keep_ids calls this before an UPDATE of `id`, and it
-- refuses a new value with SQLSTATE 23503.
CREATE OR REPLACE FUNCTION reinstatement_refuse_incident_renumber()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'incident %: its id never changes', OLD.id USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END
$fn$;
