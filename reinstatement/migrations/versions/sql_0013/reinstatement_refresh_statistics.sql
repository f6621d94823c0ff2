-- name: reinstatement-refresh-statistics
-- The planner's statistics of the tables an incident's statements read, refreshed where
-- they are missing or stale: the platform's four tables (a fresh restore or bulk load has
-- none until autovacuum's first ANALYZE, and then a batch's verdict statement took 20 to
-- 30 s where it takes 0.1) and the pipeline's tables planning fills. It runs as the owner
-- of the pipeline's functions (SECURITY DEFINER), since the pipeline's role owns no table,
-- and ANALYZEs only a table that owner may analyze (its own, or any for a superuser); it
-- changes no row and no definition. Missing: never analyzed. Stale: changed since its last
-- ANALYZE by more than a fifth of its rows (and 1,000), autovacuum's own threshold being a
-- tenth plus 50 rows, checked only once a minute.
-- Returns each table with whether it has statistics now and whether this call analyzed it.
CREATE OR REPLACE FUNCTION reinstatement_refresh_statistics()
RETURNS TABLE (table_name text, has_statistics boolean, analyzed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_table text;
    v_class regclass;
    v_missing boolean;
    v_stale boolean;
    v_may boolean;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['accounts', 'enforcement_actions', 'pins',
                                   'rule_versions', 'reinstatement_cases',
                                   'reinstatement_incident_accounts',
                                   'reinstatement_plan_cases'] LOOP
        v_class := to_regclass(v_table);
        CONTINUE WHEN v_class IS NULL;
        SELECT s.last_analyze IS NULL AND s.last_autoanalyze IS NULL,
               coalesce(s.n_mod_since_analyze > 0.2 * greatest(c.reltuples, 0) + 1000, false),
               coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user),
                        false)
               OR pg_has_role(current_user, c.relowner, 'MEMBER')
        INTO v_missing, v_stale, v_may
        FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
        WHERE c.oid = v_class;
        table_name := v_table;
        analyzed := false;
        IF (v_missing OR v_stale) AND v_may THEN
            EXECUTE format('ANALYZE %s', v_class);
            analyzed := true;
            v_missing := false;
        END IF;
        has_statistics := NOT coalesce(v_missing, true);
        RETURN NEXT;
    END LOOP;
END
$fn$;
