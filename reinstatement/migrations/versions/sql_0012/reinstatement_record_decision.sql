-- name: reinstatement-record-decision
-- An operator's decision on an incident's plan: the only way a decision is written (the
-- pipeline's role may not insert one). It runs as the tables' owner and refuses, with
-- SQLSTATE 42501, a decision on anything but the newest plan of an incident awaiting
-- approval, a plan whose entries do not match its digest, or the digest the decider did
-- not name; a second decision on one plan; an approval by the incident's declarer; and,
-- for a session connected as a person's own database role, any name but that role's.
-- The pipeline's role relays decisions taken in the Prefect UI and on the command line,
-- under the name the decider gave ('prefect-ui', 'cli'). Returns the decision's id; the
-- incident's status moves after it, through the lifecycle (reinstatement/lifecycle.py).
CREATE OR REPLACE FUNCTION reinstatement_record_decision(
    p_plan_id bigint, p_digest text, p_decision text, p_decided_by text, p_via text,
    p_operator text, p_note text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_incident bigint;
    v_key text;
    v_status text;
    v_declarer text;
    v_digest text;
    v_newest bigint;
    v_id bigint;
BEGIN
    SELECT p.incident_id, p.digest INTO v_incident, v_digest
    FROM reinstatement_plans p WHERE p.id = p_plan_id;
    IF v_incident IS NULL THEN
        RAISE EXCEPTION 'refused: there is no plan %', p_plan_id USING ERRCODE = '42501';
    END IF;
    SELECT i.key, i.status, i.declared_by INTO v_key, v_status, v_declarer
    FROM reinstatement_incidents i WHERE i.id = v_incident FOR UPDATE;
    IF v_status <> 'awaiting_approval' THEN
        RAISE EXCEPTION 'refused: incident % is not awaiting approval (it is %)', v_key,
            v_status USING ERRCODE = '42501';
    END IF;
    SELECT max(p.id) INTO v_newest FROM reinstatement_plans p WHERE p.incident_id = v_incident;
    IF v_newest <> p_plan_id THEN
        RAISE EXCEPTION 'refused: plan % of incident % is superseded by a newer plan',
            v_digest, v_key USING ERRCODE = '42501';
    END IF;
    IF v_digest IS NULL OR p_digest IS DISTINCT FROM v_digest
       OR reinstatement_plan_digest(p_plan_id) IS DISTINCT FROM v_digest THEN
        RAISE EXCEPTION 'refused: the decision names plan %, and incident %''s newest plan '
            'is % (its entries hash to %)', p_digest, v_key, v_digest,
            reinstatement_plan_digest(p_plan_id) USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM reinstatement_decisions d WHERE d.plan_id = p_plan_id) THEN
        RAISE EXCEPTION 'refused: plan % of incident % is decided already', v_digest, v_key
            USING ERRCODE = '42501';
    END IF;
    IF p_decision IS NULL OR p_decision NOT IN ('approve', 'reject') THEN
        RAISE EXCEPTION 'refused: a decision is approve or reject' USING ERRCODE = '42501';
    END IF;
    IF btrim(coalesce(p_decided_by, '')) = '' OR length(p_decided_by) > 100 THEN
        RAISE EXCEPTION 'refused: a decision on incident % names who decided', v_key
            USING ERRCODE = '42501';
    END IF;
    IF p_decision = 'reject' AND btrim(coalesce(p_note, '')) = '' THEN
        RAISE EXCEPTION 'refused: a rejection of incident % says why', v_key
            USING ERRCODE = '42501';
    END IF;
    PERFORM reinstatement_check_person(p_decided_by, p_via, 'a decision');
    IF p_decision = 'approve'
       AND lower(btrim(p_decided_by)) = lower(btrim(coalesce(v_declarer, ''))) THEN
        RAISE EXCEPTION 'refused: % declared incident % and may not approve it: another '
            'person approves', btrim(p_decided_by), v_key USING ERRCODE = '42501';
    END IF;
    INSERT INTO reinstatement_decisions (incident_id, plan_id, decision, decided_by,
                                         decided_via, operator, database_role, note,
                                         decided_at)
    VALUES (v_incident, p_plan_id, p_decision, btrim(p_decided_by), p_via,
            nullif(btrim(coalesce(p_operator, '')), ''), session_user,
            coalesce(p_note, ''), now())
    RETURNING id INTO v_id;
    RETURN v_id;
END
$fn$;
