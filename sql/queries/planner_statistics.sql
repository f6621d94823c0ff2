-- The planner's statistics of the tables an incident's statements read
-- (reinstatement/planner_statistics.py).

-- name: refresh_statistics.postgresql
-- ANALYZE, through the owner's function, the tables whose statistics are missing or stale;
-- each table with whether it has statistics now and whether it was analyzed.
SELECT table_name, has_statistics, analyzed FROM reinstatement_refresh_statistics();
