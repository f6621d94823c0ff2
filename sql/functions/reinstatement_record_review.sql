-- name: reinstatement-record-review
-- A reviewer's decision on a case that needs review: the only way a review is written
-- (the pipeline's role may not insert one), and what the restore function reads before it
-- restores a case its plan holds as needing review. It runs as the tables' owner and
-- refuses, with SQLSTATE 42501, a case not waiting for review, a decision other than
-- reinstate or uphold, a review without a reviewer or a note, and, for a session connected
-- as a person's own database role, any name but that role's. The pipeline's role relays
-- reviews taken in the Prefect UI and on the command line ('prefect-ui', 'cli'). Returns
-- the review's id; the case records the decision after it (reinstatement/review.py).
CREATE OR REPLACE FUNCTION reinstatement_record_review(
    p_case_id bigint, p_decision text, p_reviewer text, p_via text, p_note text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_incident bigint;
    v_state text;
    v_id bigint;
BEGIN
    SELECT c.incident_id, c.state INTO v_incident, v_state
    FROM reinstatement_cases c WHERE c.id = p_case_id FOR UPDATE;
    IF v_incident IS NULL THEN
        RAISE EXCEPTION 'refused: there is no case %', p_case_id USING ERRCODE = '42501';
    END IF;
    IF v_state <> 'review' THEN
        RAISE EXCEPTION 'refused: case % is not waiting for review (it is %)', p_case_id,
            v_state USING ERRCODE = '42501';
    END IF;
    IF p_decision IS NULL OR p_decision NOT IN ('reinstate', 'uphold') THEN
        RAISE EXCEPTION 'refused: a review is reinstate or uphold' USING ERRCODE = '42501';
    END IF;
    IF btrim(coalesce(p_reviewer, '')) = '' OR length(p_reviewer) > 100
       OR btrim(coalesce(p_note, '')) = '' THEN
        RAISE EXCEPTION 'refused: a review of case % names its reviewer and says why',
            p_case_id USING ERRCODE = '42501';
    END IF;
    PERFORM reinstatement_check_person(p_reviewer, p_via, 'a review');
    INSERT INTO reinstatement_reviews (incident_id, case_id, decision, reviewed_by,
                                       reviewed_via, database_role, note, decided_at)
    VALUES (v_incident, p_case_id, p_decision, btrim(p_reviewer), p_via, session_user,
            btrim(p_note), now())
    RETURNING id INTO v_id;
    RETURN v_id;
END
$fn$;
