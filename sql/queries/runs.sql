-- The pipeline's record of runs (reinstatement/runs.py).

-- name: insert_held_run.postgresql
-- Insert a run's row and take the session-level lock of its claim ('run:' and its id, keyed
-- as holders.sql keys a claim) in one statement: no other session can see the row
-- 'running' before its run holds it. The run's id.
WITH r AS (
    INSERT INTO reinstatement_runs (incident_id, flow_run_id, dry_run, status, started_at,
                                    host, pid, parent_run_id, step)
    VALUES (:incident_id, :flow_run_id, :dry_run, :status, :started_at,
            :host, :pid, :parent_run_id, :step)
    RETURNING id
)
SELECT id, pg_advisory_lock(('x' || substr(md5('run:' || id), 1, 16))::bit(64)::bigint)
FROM r;
