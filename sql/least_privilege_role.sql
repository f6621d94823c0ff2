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

-- The platform: read everything the verification needs, and write nothing directly. A
-- re-run of this script on a database where an earlier version granted column writes
-- takes them back (revoking a table privilege revokes its column privileges too).
DO $$
DECLARE
    seq text := pg_get_serial_sequence('enforcement_actions', 'id');
BEGIN
    IF seq IS NOT NULL THEN
        EXECUTE format('REVOKE USAGE ON SEQUENCE %s FROM reinstatement_pipeline', seq);
    END IF;
END $$;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON accounts, rule_versions, enforcement_actions, pins FROM reinstatement_pipeline;
GRANT SELECT ON accounts, rule_versions, enforcement_actions, pins TO reinstatement_pipeline;
-- A restore's platform writes go through the owner's two functions (migration 0006), which
-- check each account and ban against the contract first: a verified reinstatement case, a
-- standing rules-engine ban by a version its incident names faulty, inside the window, no
-- other standing ban. They write only the account's status, one unban action, the bans'
-- reversal and the pins those bans hid.
GRANT EXECUTE ON FUNCTION
    reinstatement_restore_accounts(bigint[], bigint[], text[], bigint[], bigint[], text,
                                   timestamp with time zone),
    reinstatement_lock_accounts(bigint[])
    TO reinstatement_pipeline;

-- Its own tables: everything but DELETE; the audit trail only grows.
GRANT SELECT, INSERT, UPDATE ON
    reinstatement_incidents, reinstatement_incident_versions,
    reinstatement_incident_accounts, reinstatement_cases, reinstatement_notices,
    reinstatement_runs
    TO reinstatement_pipeline;
GRANT SELECT, INSERT ON reinstatement_audit TO reinstatement_pipeline;
-- Where each batch ran: written once, never changed.
GRANT SELECT, INSERT ON reinstatement_batches TO reinstatement_pipeline;
GRANT SELECT ON reinstatement_alembic_version TO reinstatement_pipeline;

-- The id sequences behind the rows it inserts: its own tables (the unban actions are
-- inserted by the owner's function).
DO $$
DECLARE
    owned record;
BEGIN
    FOR owned IN
        SELECT pg_get_serial_sequence(format('%I', t.table_name), 'id') AS seq
        FROM information_schema.columns t
        WHERE t.table_schema = 'public' AND t.column_name = 'id'
          AND t.table_name LIKE 'reinstatement\_%'
    LOOP
        IF owned.seq IS NOT NULL THEN
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO reinstatement_pipeline', owned.seq);
        END IF;
    END LOOP;
END $$;

-- Its own tables, narrowed where a write would stand for an operator's decision or for a
-- notice sent. These triggers bind this role only (other roles, such as the owner running
-- migrations, are not checked); a refused write raises insufficient_privilege (42501).

-- An incident: created as 'registered'; its status moves only along the lifecycle of
-- reinstatement/lifecycle.py (ALLOWED, kept equal by tests/test_security.py); approval
-- and rejection only from 'awaiting_approval', and only naming the operator who decided;
-- its key and parameters never change.
CREATE OR REPLACE FUNCTION reinstatement_guard_incident() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_user <> 'reinstatement_pipeline' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'registered' OR NEW.approval IS NOT NULL
           OR NEW.approved_by IS NOT NULL THEN
            RAISE EXCEPTION 'refused: an incident starts as registered, undecided'
                USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.key IS DISTINCT FROM OLD.key OR NEW.params::text IS DISTINCT FROM OLD.params::text
       OR NEW.params_digest IS DISTINCT FROM OLD.params_digest THEN
        RAISE EXCEPTION 'refused: incident %''s key and parameters never change', OLD.key
            USING ERRCODE = '42501';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('registered', 'previewed'), ('registered', 'awaiting_approval'),
        ('registered', 'running'),
        ('previewed', 'awaiting_approval'), ('previewed', 'running'),
        ('awaiting_approval', 'approved'), ('awaiting_approval', 'rejected'),
        ('approved', 'running'), ('approved', 'awaiting_approval'),
        ('running', 'completed'), ('running', 'awaiting_approval'),
        ('completed', 'running')
    ) THEN
        RAISE EXCEPTION 'refused: incident % cannot go from % to %', OLD.key, OLD.status,
            NEW.status USING ERRCODE = '42501';
    END IF;
    IF (NEW.approval, NEW.approved_by, NEW.approval_note, NEW.approval_decided_at)
       IS DISTINCT FROM
       (OLD.approval, OLD.approved_by, OLD.approval_note, OLD.approval_decided_at) THEN
        IF OLD.status = 'awaiting_approval' AND NEW.status IN ('approved', 'rejected') THEN
            IF NEW.approval IS DISTINCT FROM
                   (CASE NEW.status WHEN 'approved' THEN 'approved' ELSE 'rejected' END)
               OR btrim(coalesce(NEW.approved_by, '')) = ''
               OR NEW.approval_decided_at IS NULL THEN
                RAISE EXCEPTION 'refused: a decision on incident % names its operator',
                    OLD.key USING ERRCODE = '42501';
            END IF;
        ELSIF NOT (NEW.status = 'awaiting_approval' AND NEW.approval IS NULL
                   AND NEW.approved_by IS NULL AND NEW.approval_decided_at IS NULL) THEN
            RAISE EXCEPTION 'refused: incident %''s approval changes only by a decision',
                OLD.key USING ERRCODE = '42501';
        END IF;
    ELSIF NEW.status IN ('approved', 'rejected') AND OLD.status <> NEW.status THEN
        RAISE EXCEPTION 'refused: a decision on incident % names its operator', OLD.key
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS reinstatement_guard_incident ON reinstatement_incidents;
CREATE TRIGGER reinstatement_guard_incident
    BEFORE INSERT OR UPDATE ON reinstatement_incidents
    FOR EACH ROW EXECUTE FUNCTION reinstatement_guard_incident();

-- A notice: created unsent and unclaimed; 'sent' (and 'retry', 'failed', back to
-- 'pending') only from 'sending', the state of a claim that holds a token; a settled
-- notice ('sent', 'failed', 'no_address', 'suppressed') never changes again; whom it is
-- for and its Message-ID never change.
CREATE OR REPLACE FUNCTION reinstatement_guard_notice() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_user <> 'reinstatement_pipeline' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.state NOT IN ('pending', 'no_address', 'suppressed')
           OR NEW.claim_token IS NOT NULL OR NEW.sent_at IS NOT NULL THEN
            RAISE EXCEPTION 'refused: a notice starts unsent and unclaimed'
                USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.case_id, NEW.incident_id, NEW.account_id, NEW.message_id, NEW.recipient,
        NEW.locale) IS DISTINCT FROM
       (OLD.case_id, OLD.incident_id, OLD.account_id, OLD.message_id, OLD.recipient,
        OLD.locale) THEN
        RAISE EXCEPTION 'refused: notice % keeps its recipient and Message-ID', OLD.id
            USING ERRCODE = '42501';
    END IF;
    IF OLD.state IN ('sent', 'failed', 'no_address', 'suppressed') THEN
        RAISE EXCEPTION 'refused: notice % is settled (%)', OLD.id, OLD.state
            USING ERRCODE = '42501';
    END IF;
    IF NEW.state = 'sending' THEN
        IF NEW.claim_token IS NULL THEN
            RAISE EXCEPTION 'refused: a claim on notice % carries a token', OLD.id
                USING ERRCODE = '42501';
        END IF;
    ELSIF NEW.state IN ('sent', 'retry', 'failed', 'pending') THEN
        IF OLD.state <> 'sending' OR OLD.claim_token IS NULL THEN
            RAISE EXCEPTION 'refused: notice % becomes % only from a claim (it is %)',
                OLD.id, NEW.state, OLD.state USING ERRCODE = '42501';
        END IF;
    ELSE
        RAISE EXCEPTION 'refused: notice % cannot become %', OLD.id, NEW.state
            USING ERRCODE = '42501';
    END IF;
    IF NEW.sent_at IS NOT NULL AND NEW.state <> 'sent' THEN
        RAISE EXCEPTION 'refused: only a sent notice has a sending time' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS reinstatement_guard_notice ON reinstatement_notices;
CREATE TRIGGER reinstatement_guard_notice
    BEFORE INSERT OR UPDATE ON reinstatement_notices
    FOR EACH ROW EXECUTE FUNCTION reinstatement_guard_notice();
