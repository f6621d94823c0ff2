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
-- A restore's platform writes go through the owner's function
-- (sql/functions/reinstatement_restore_accounts.sql), which decides for itself what may
-- be written: a running incident; for one that requires approval, only cases its newest
-- plan holds, once an operator approved it; only standing rules-engine bans by versions
-- the platform marks 'faulty', named by the incident, inside its window, with no other
-- standing ban. It writes only the account's status, one unban action (its actor and
-- time the function's own), the bans' reversal and the pins those bans hid.
GRANT EXECUTE ON FUNCTION
    reinstatement_restore_accounts(bigint[], bigint[], bigint[], bigint[]),
    reinstatement_lock_accounts(bigint[]),
    reinstatement_plan_digest(bigint),
    reinstatement_record_decision(bigint, text, text, text, text, text, text),
    reinstatement_record_review(bigint, text, text, text, text),
    reinstatement_check_person(text, text, text),
    reinstatement_refresh_statistics()
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
-- Suspect rule versions the nightly's fault detection found (they restore nothing).
GRANT SELECT, INSERT, UPDATE ON reinstatement_suspects TO reinstatement_pipeline;
-- Lists of account ids staged for incidents: written once, never changed.
GRANT SELECT, INSERT ON reinstatement_account_lists, reinstatement_account_list_members
    TO reinstatement_pipeline;
-- Plans: written once (a plan's digest and count are set by the transaction that wrote
-- it, from its entries; see the guards below). Decisions and reviews: read only; each is
-- written by the owner's function reinstatement_record_decision or
-- reinstatement_record_review, which checks it first.
REVOKE UPDATE, DELETE, TRUNCATE ON reinstatement_plans, reinstatement_plan_cases,
    reinstatement_decisions, reinstatement_reviews FROM reinstatement_pipeline;
REVOKE INSERT ON reinstatement_decisions, reinstatement_reviews FROM reinstatement_pipeline;
GRANT SELECT, INSERT ON reinstatement_plans, reinstatement_plan_cases
    TO reinstatement_pipeline;
GRANT UPDATE (digest, cases) ON reinstatement_plans TO reinstatement_pipeline;
GRANT SELECT ON reinstatement_decisions, reinstatement_reviews TO reinstatement_pipeline;

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

-- Its own tables, narrowed where a write would stand for an operator's decision, a plan an
-- operator saw, or a notice sent. These triggers bind this role and every role that is a
-- member of it (a person's own role, granted it with `GRANT reinstatement_pipeline TO
-- ana;`), but not the tables' owner running migrations, nor a superuser; a refused write
-- raises insufficient_privilege (42501). A person's own role declares incidents under its
-- own name only, and decides under it only (reinstatement_record_decision).

-- An incident: created as 'registered', naming who declared it; its status moves only
-- along the lifecycle of reinstatement/lifecycle.py (ALLOWED, kept equal by
-- tests/test_security.py), to approved or rejected only after that decision on its newest
-- plan; its key, parameters and declarer never change.
CREATE OR REPLACE FUNCTION reinstatement_guard_incident() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    v_plan bigint;
    v_decision text;
BEGIN
    IF current_user <> 'reinstatement_pipeline'
       AND (current_setting('is_superuser') = 'on'
            OR NOT pg_has_role(current_user, 'reinstatement_pipeline', 'MEMBER')) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'registered' THEN
            RAISE EXCEPTION 'refused: an incident starts as registered'
                USING ERRCODE = '42501';
        END IF;
        IF btrim(coalesce(NEW.declared_by, '')) = '' THEN
            RAISE EXCEPTION 'refused: an incident names who declared it'
                USING ERRCODE = '42501';
        END IF;
        PERFORM reinstatement_check_person(NEW.declared_by, NEW.declared_via,
                                           'a declaration');
        RETURN NEW;
    END IF;
    IF NEW.key IS DISTINCT FROM OLD.key OR NEW.params::text IS DISTINCT FROM OLD.params::text
       OR NEW.params_digest IS DISTINCT FROM OLD.params_digest
       OR NEW.declared_by IS DISTINCT FROM OLD.declared_by
       OR NEW.declared_via IS DISTINCT FROM OLD.declared_via THEN
        RAISE EXCEPTION 'refused: incident %''s key, parameters and declarer never change',
            OLD.key USING ERRCODE = '42501';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('registered', 'previewed'), ('registered', 'awaiting_approval'),
        ('registered', 'running'),
        ('previewed', 'awaiting_approval'), ('previewed', 'running'),
        ('awaiting_approval', 'approved'), ('awaiting_approval', 'rejected'),
        ('approved', 'running'), ('approved', 'awaiting_approval'),
        ('running', 'completed'), ('running', 'awaiting_approval'),
        ('completed', 'running'), ('completed', 'awaiting_approval')
    ) THEN
        RAISE EXCEPTION 'refused: incident % cannot go from % to %', OLD.key, OLD.status,
            NEW.status USING ERRCODE = '42501';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('approved', 'rejected') THEN
        SELECT max(p.id) INTO v_plan FROM reinstatement_plans p WHERE p.incident_id = NEW.id;
        SELECT d.decision INTO v_decision FROM reinstatement_decisions d
        WHERE d.plan_id = v_plan ORDER BY d.id LIMIT 1;
        IF v_decision IS DISTINCT FROM
               (CASE NEW.status WHEN 'approved' THEN 'approve' ELSE 'reject' END) THEN
            RAISE EXCEPTION 'refused: incident % is % only after that decision on its newest '
                'plan', OLD.key, NEW.status USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS reinstatement_guard_incident ON reinstatement_incidents;
CREATE TRIGGER reinstatement_guard_incident
    BEFORE INSERT OR UPDATE ON reinstatement_incidents
    FOR EACH ROW EXECUTE FUNCTION reinstatement_guard_incident();

-- A plan: written with no digest; then, once, by the transaction that wrote it, its digest
-- and count (from the entries it wrote) and nothing else. Its entries are written only by
-- that transaction, before the digest: once a plan is named by a digest, nothing is added
-- to it (the owner's reinstatement_record_decision checks the digest against the entries
-- again before anyone may approve it).
CREATE OR REPLACE FUNCTION reinstatement_guard_plan() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_user <> 'reinstatement_pipeline'
       AND (current_setting('is_superuser') = 'on'
            OR NOT pg_has_role(current_user, 'reinstatement_pipeline', 'MEMBER')) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.digest IS NOT NULL THEN
            RAISE EXCEPTION 'refused: a plan is written before its digest'
                USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.digest IS NOT NULL THEN
        RAISE EXCEPTION 'refused: plan % is fixed once written', OLD.digest
            USING ERRCODE = '42501';
    END IF;
    IF (NEW.id, NEW.incident_id, NEW.dry_run, NEW.created_by, NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.incident_id, OLD.dry_run, OLD.created_by, OLD.created_at)
       OR NOT EXISTS (SELECT 1 FROM reinstatement_plans p
                      WHERE p.id = OLD.id AND p.xmin = pg_current_xact_id()::xid) THEN
        RAISE EXCEPTION 'refused: only the transaction that wrote a plan sets its digest'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS reinstatement_guard_plan ON reinstatement_plans;
CREATE TRIGGER reinstatement_guard_plan
    BEFORE INSERT OR UPDATE ON reinstatement_plans
    FOR EACH ROW EXECUTE FUNCTION reinstatement_guard_plan();

-- Checked once per statement (a plan may hold a million entries).
CREATE OR REPLACE FUNCTION reinstatement_guard_plan_cases() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_user <> 'reinstatement_pipeline'
       AND (current_setting('is_superuser') = 'on'
            OR NOT pg_has_role(current_user, 'reinstatement_pipeline', 'MEMBER')) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM (SELECT DISTINCT r.plan_id FROM written_entries r) AS r
               LEFT JOIN reinstatement_plans p ON p.id = r.plan_id
               WHERE p.id IS NULL OR p.digest IS NOT NULL
                  OR NOT (p.xmin = pg_current_xact_id()::xid)) THEN
        RAISE EXCEPTION 'refused: a plan''s entries are written with the plan, before its '
            'digest' USING ERRCODE = '42501';
    END IF;
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS reinstatement_guard_plan_cases ON reinstatement_plan_cases;
CREATE TRIGGER reinstatement_guard_plan_cases
    AFTER INSERT ON reinstatement_plan_cases
    REFERENCING NEW TABLE AS written_entries
    FOR EACH STATEMENT EXECUTE FUNCTION reinstatement_guard_plan_cases();

-- A notice: created unsent and unclaimed; 'sent' (and 'retry', 'failed', back to
-- 'pending') only from 'sending', the state of a claim that holds a token; a settled
-- notice ('sent', 'failed', 'no_address', 'suppressed') never changes again; whom it is
-- for and its Message-ID never change.
CREATE OR REPLACE FUNCTION reinstatement_guard_notice() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_user <> 'reinstatement_pipeline'
       AND (current_setting('is_superuser') = 'on'
            OR NOT pg_has_role(current_user, 'reinstatement_pipeline', 'MEMBER')) THEN
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
    IF OLD.state = 'failed' AND NEW.state = 'pending' THEN
        -- A failed notice queued again (`reinstate notices resend`), unclaimed and unsent,
        -- with its Message-ID (checked above).
        IF NEW.claim_token IS NOT NULL OR NEW.sent_at IS NOT NULL THEN
            RAISE EXCEPTION 'refused: notice % is queued again unsent and unclaimed', OLD.id
                USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
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
