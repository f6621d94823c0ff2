-- name: reinstatement-plan-digest
-- A plan's digest from the entries it holds: sha256, in hex, of its lines in case order,
-- after a header naming the incident; the same text as `plans.plan_digest` makes in
-- Python (SQLite's, and the reference a test holds this one to):
--     reinstatement-plan/1 <incident key>\n
--     <case id> <account id> <round> <verdict> <ban ids>\n    (one line per case)
-- NULL for a plan that does not exist.
CREATE OR REPLACE FUNCTION reinstatement_plan_digest(p_plan_id bigint)
RETURNS text
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $fn$
SELECT encode(sha256(convert_to(
    'reinstatement-plan/1 ' || i.key || E'\n' || coalesce((
        SELECT string_agg(e.case_id || ' ' || e.account_id || ' ' || e.round || ' '
                          || e.verdict || ' ' || e.ban_ids || E'\n', '' ORDER BY e.case_id)
        FROM reinstatement_plan_cases e WHERE e.plan_id = p.id), ''),
    'UTF8')), 'hex')
FROM reinstatement_plans p
JOIN reinstatement_incidents i ON i.id = p.incident_id
WHERE p.id = p_plan_id
$fn$;
