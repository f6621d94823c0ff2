-- name: reinstatement-check-incident-named
-- Cases, notices and audit rows each name their incident. Instead of a foreign key
-- checked row by row, the triggers reinstatement_{cases,notices,audit}_incident_named
-- call this once per inserting statement, with its rows as `inserted_rows`: it locks the
-- incidents they name (FOR KEY SHARE, as a foreign key's check does, until the
-- transaction ends) and refuses the statement with SQLSTATE 23503 (foreign_key_violation)
-- if one of them does not exist.
CREATE OR REPLACE FUNCTION reinstatement_check_incident_named()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    named bigint[];
    found integer;
BEGIN
    SELECT array_agg(DISTINCT r.incident_id) INTO named FROM inserted_rows r;
    IF named IS NULL THEN
        RETURN NULL;
    END IF;
    IF array_position(named, NULL) IS NOT NULL THEN
        RETURN NULL;  -- the column is NOT NULL: the insert has failed already
    END IF;
    -- Held until the transaction ends, as a foreign key's check holds it: no incident is
    -- deleted under rows that name it.
    PERFORM 1 FROM reinstatement_incidents i WHERE i.id = ANY (named) FOR KEY SHARE;
    GET DIAGNOSTICS found = ROW_COUNT;
    IF found <> cardinality(named) THEN
        RAISE EXCEPTION 'insert on table "%" names an incident that does not exist',
            TG_TABLE_NAME USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$fn$;
