-- name: reinstatement-check-person
-- Who a declaration, a decision or a review is recorded under, checked where it is
-- written: a session connected as a person's own database role (neither the pipeline's
-- role nor a superuser, which people share) records only that role's name, as
-- 'database-role'; the pipeline's role (and an administrator) relays the names people
-- give on the command line ('cli') or in the Prefect UI ('prefect-ui'). Raises
-- insufficient_privilege (42501) naming `p_what` otherwise.
CREATE OR REPLACE FUNCTION reinstatement_check_person(p_name text, p_via text, p_what text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF session_user <> 'reinstatement_pipeline'
       AND NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user),
                        false) THEN
        IF p_name IS DISTINCT FROM session_user::text
           OR p_via IS DISTINCT FROM 'database-role' THEN
            RAISE EXCEPTION 'refused: connected as database role %, % is recorded under '
                'that name', session_user, p_what USING ERRCODE = '42501';
        END IF;
    ELSIF p_via IS DISTINCT FROM 'cli' AND p_via IS DISTINCT FROM 'prefect-ui' THEN
        RAISE EXCEPTION 'refused: % relayed by the pipeline comes from the cli or the '
            'prefect-ui', p_what USING ERRCODE = '42501';
    END IF;
END
$fn$;
