-- name: least-privilege-role
-- The PostgreSQL role the pipeline runs as: it may read the platform's four tables and
-- change only what the contract lets it change; it owns nothing, and it cannot alter
-- any schema (migrations run as the owner, `reinstate db upgrade`).
-- Safe to re-run. Set its password outside the repository:
--     ALTER ROLE reinstatement_pipeline PASSWORD '...';
-- Run it as the owner of the tables, in the platform's database, after `reinstate db upgrade`:
--     psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f sql/least_privilege_role.sql

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reinstatement_pipeline') THEN
        CREATE ROLE reinstatement_pipeline LOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA public TO reinstatement_pipeline;

-- The platform: read everything the verification needs ...
GRANT SELECT ON accounts, rule_versions, enforcement_actions, pins TO reinstatement_pipeline;
-- ... and write only the columns the contract names for a reinstatement.
GRANT UPDATE (status, updated_at) ON accounts TO reinstatement_pipeline;
GRANT INSERT (id, account_id, kind, source, rule_version_id, actor, reason, evidence,
              created_at, reversed_at, reversed_by_action_id)
    ON enforcement_actions TO reinstatement_pipeline;
GRANT UPDATE (reversed_at, reversed_by_action_id) ON enforcement_actions
    TO reinstatement_pipeline;
GRANT UPDATE (status, hidden_by_action_id, updated_at) ON pins TO reinstatement_pipeline;

-- Its own tables: everything but DELETE; the audit trail only grows.
GRANT SELECT, INSERT, UPDATE ON
    reinstatement_incidents, reinstatement_incident_versions,
    reinstatement_incident_accounts, reinstatement_cases, reinstatement_notices,
    reinstatement_runs
    TO reinstatement_pipeline;
GRANT SELECT, INSERT ON reinstatement_audit TO reinstatement_pipeline;
GRANT SELECT ON reinstatement_alembic_version TO reinstatement_pipeline;

-- The id sequences behind the rows it inserts: the unban action and its own tables.
DO $$
DECLARE
    owned record;
BEGIN
    FOR owned IN
        SELECT pg_get_serial_sequence(format('%I', t.table_name), 'id') AS seq
        FROM information_schema.columns t
        WHERE t.table_schema = 'public' AND t.column_name = 'id'
          AND (t.table_name = 'enforcement_actions' OR t.table_name LIKE 'reinstatement\_%')
    LOOP
        IF owned.seq IS NOT NULL THEN
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO reinstatement_pipeline', owned.seq);
        END IF;
    END LOOP;
END $$;
