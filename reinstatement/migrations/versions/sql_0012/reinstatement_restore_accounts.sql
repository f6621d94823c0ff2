-- name: reinstatement-restore-accounts
-- A batch's restore on the platform, the only way the pipeline's role changes a platform
-- row. It runs as the tables' owner (SECURITY DEFINER) and decides for itself whether
-- each write is allowed, trusting no row the role can write: the incident must be
-- running; where it requires approval, every case must be held, exactly so, by its newest
-- plan, and an operator must have approved that plan; every ban reversed must be a
-- standing rules-engine ban by a version the platform marks 'faulty' (a table the role
-- cannot write), named by the incident, inside its window, and the account's only
-- standing ban. The actor of the unban is the pipeline's and its time the database's.
-- One failed check raises and the whole batch rolls back, platform rows untouched.
--
-- Arguments, one entry per account in the order the result comes back: the cases and
-- their accounts; then every ban to reverse with its account.
-- Returns, per account: its unban action and the number of pins shown again.
--
-- SQLSTATEs: 42501 (insufficient_privilege) for a write the rules do not allow; 22023 for
-- arrays that do not line up; RS001 for a platform row that changed under the batch
-- (the caller's locks make that impossible; it is checked all the same).
CREATE OR REPLACE FUNCTION reinstatement_restore_accounts(
    p_case_ids bigint[], p_account_ids bigint[], p_ban_ids bigint[], p_ban_accounts bigint[])
RETURNS TABLE (restored_account_id bigint, unban_action_id bigint, pins_restored integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
-- Its statements' cost estimates over a batch's arrays are high enough to start JIT
-- compilation, which cost ~190 ms per batch of 5,000 and saved nothing.
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(p_account_ids), 0);
    m integer := coalesce(cardinality(p_ban_ids), 0);
    bad text;
    changed integer;
    v_incident bigint;
    v_incidents integer;
    v_key text;
    v_status text;
    v_params json;
    v_plan bigint;
    v_now timestamptz := now();
    v_accounts bigint[];
    v_unbans bigint[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF coalesce(cardinality(p_case_ids), 0) <> n
       OR coalesce(cardinality(p_ban_accounts), 0) <> m OR m = 0 THEN
        RAISE EXCEPTION 'reinstatement_restore_accounts: the arrays do not line up'
            USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(DISTINCT a) FROM unnest(p_account_ids) AS a) <> n
       OR (SELECT count(DISTINCT c) FROM unnest(p_case_ids) AS c) <> n
       OR (SELECT count(DISTINCT b) FROM unnest(p_ban_ids) AS b) <> m THEN
        RAISE EXCEPTION 'reinstatement_restore_accounts: a case, an account or a ban is '
            'named twice' USING ERRCODE = '22023';
    END IF;

    -- One incident for the whole batch, and what it allows now.
    SELECT min(c.incident_id), count(DISTINCT c.incident_id) INTO v_incident, v_incidents
    FROM unnest(p_case_ids) AS r(case_id)
    JOIN LATERAL (SELECT c.incident_id FROM reinstatement_cases c
                  WHERE c.id = r.case_id LIMIT 1) AS c ON true;
    IF v_incidents <> 1 THEN
        RAISE EXCEPTION 'refused: the cases of a batch belong to one incident'
            USING ERRCODE = '42501';
    END IF;
    SELECT i.key, i.status, i.params INTO v_key, v_status, v_params
    FROM reinstatement_incidents i WHERE i.id = v_incident FOR SHARE;
    IF v_status IS DISTINCT FROM 'running' THEN
        RAISE EXCEPTION 'refused: incident % is %, not running', v_key, v_status
            USING ERRCODE = '42501';
    END IF;

    -- The versions the incident names: each one the platform marks faulty, each corrected
    -- (where it names a correction) by a newer version of the same rule.
    SELECT format('%s', min(v.faulty_name)) INTO bad
    FROM reinstatement_incident_versions v
    LEFT JOIN rule_versions f ON f.id = v.faulty_rule_version_id
    LEFT JOIN rule_versions c ON c.id = v.corrected_rule_version_id
    WHERE v.incident_id = v_incident
      AND (f.id IS NULL OR f.status <> 'faulty'
           OR (v.corrected_rule_version_id IS NOT NULL
               AND (c.id IS NULL OR c.rule_name <> f.rule_name OR c.version <= f.version)))
    HAVING count(*) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: incident % names % as faulty, which the platform does not '
            'mark faulty or whose correction is not a newer version of its rule', v_key, bad
            USING ERRCODE = '42501';
    END IF;

    -- Each case is a verified reinstatement of its account (or one this very transaction
    -- wrote `restored`, with no unban yet: a settle batch's own verdict; `xmin` is the
    -- transaction that wrote the row's version, and the pipeline opens no savepoints, so
    -- its writes carry the top transaction's id).
    SELECT format('case %s', min(r.case_id)) INTO bad
    FROM unnest(p_case_ids, p_account_ids) AS r(case_id, account_id)
    LEFT JOIN LATERAL (
        SELECT c.id FROM reinstatement_cases c
        WHERE c.id = r.case_id AND c.account_id = r.account_id
          AND (c.state = 'verified'
               OR (c.state = 'restored' AND c.unban_action_id IS NULL
                   AND c.xmin = pg_current_xact_id()::xid))
          AND (c.outcome = 'reinstated' OR c.review_decision = 'reinstate')
        LIMIT 1
    ) AS ok ON true
    WHERE ok.id IS NULL
    HAVING count(*) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % is not a verified reinstatement', bad
            USING ERRCODE = '42501';
    END IF;

    -- Where the incident requires approval: its newest plan is approved, and holds each
    -- case with its account, a verdict that restores (reinstated, or needs_review that a
    -- reviewer decided to reinstate, as reinstatement_reviews holds it: the case's own
    -- columns are the role's to write) and exactly the bans named here. A missing setting
    -- is read as requiring approval.
    IF coalesce((v_params ->> 'require_approval')::boolean, true) THEN
        SELECT max(p.id) INTO v_plan FROM reinstatement_plans p
        WHERE p.incident_id = v_incident;
        IF v_plan IS NULL OR NOT EXISTS (
            SELECT 1 FROM reinstatement_decisions d
            WHERE d.plan_id = v_plan AND d.decision = 'approve') THEN
            RAISE EXCEPTION 'refused: incident %''s newest plan is not approved', v_key
                USING ERRCODE = '42501';
        END IF;
        WITH named AS (
            SELECT b.account_id, string_agg(b.ban_id::text, ',' ORDER BY b.ban_id) AS bans
            FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
            GROUP BY b.account_id
        )
        SELECT format('case %s', min(r.case_id)) INTO bad
        FROM unnest(p_case_ids, p_account_ids) AS r(case_id, account_id)
        LEFT JOIN named ON named.account_id = r.account_id
        LEFT JOIN LATERAL (
            SELECT e.case_id FROM reinstatement_plan_cases e
            WHERE e.plan_id = v_plan AND e.case_id = r.case_id
              AND e.account_id = r.account_id AND e.ban_ids = named.bans
              AND (e.verdict = 'reinstated'
                   OR (e.verdict = 'needs_review'
                       AND (SELECT rv.decision FROM reinstatement_reviews rv
                            WHERE rv.case_id = e.case_id
                            ORDER BY rv.id DESC LIMIT 1) = 'reinstate'))
            LIMIT 1
        ) AS ok ON true
        WHERE ok.case_id IS NULL
        HAVING count(*) > 0;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'refused: % is not held by incident %''s approved plan as it '
                'is named here', bad, v_key USING ERRCODE = '42501';
        END IF;
    END IF;

    -- Each account to restore has a ban to reverse, and each ban to reverse belongs to
    -- one of the accounts.
    -- Each check reads its whole set and aggregates (min ... HAVING count), never an outer
    -- `LIMIT 1`: with it the planner expects to stop early and joins the batch's arrays
    -- in a nested loop, quadratic in the batch (seconds per batch of 5,000). Nor
    -- `x = ANY (array)` per row, quadratic too: set differences instead. Rows are looked
    -- up per element through a LATERAL ... LIMIT 1 on their primary keys, which the
    -- planner cannot turn into a scan of a table whose statistics the batch just made
    -- stale.
    SELECT format('account %s', min(missing.a)) INTO bad
    FROM (SELECT unnest(p_account_ids) AS a EXCEPT SELECT unnest(p_ban_accounts)) AS missing
    HAVING count(*) > 0;
    IF bad IS NULL THEN
        SELECT format('the ban of account %s', min(stray.a)) INTO bad
        FROM (SELECT unnest(p_ban_accounts) AS a EXCEPT SELECT unnest(p_account_ids)) AS stray
        HAVING count(*) > 0;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % has no ban of the batch to reverse, or no account in it',
            bad USING ERRCODE = '42501';
    END IF;

    -- Each ban is a standing rules-engine ban on its account, by a version the incident
    -- names (each of them faulty, checked above), inside the incident's window (from the
    -- second round on, a ban after the window's end counts too: the incident's own rule
    -- banned again).
    SELECT format('action %s', min(b.ban_id)) INTO bad
    FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
    JOIN unnest(p_case_ids, p_account_ids) AS r(case_id, account_id)
      ON r.account_id = b.account_id
    LEFT JOIN LATERAL (
        SELECT ea.id
        FROM enforcement_actions ea
        JOIN reinstatement_cases c ON c.id = r.case_id
        WHERE ea.id = b.ban_id AND ea.account_id = b.account_id AND ea.kind = 'ban'
          AND ea.source = 'rule' AND ea.reversed_at IS NULL
          AND EXISTS (SELECT 1 FROM reinstatement_incident_versions v
                      WHERE v.incident_id = v_incident
                        AND v.faulty_rule_version_id = ea.rule_version_id)
          AND (v_params ->> 'since' IS NULL
               OR ea.created_at >= (v_params ->> 'since')::timestamptz)
          AND (c.round > 1 OR v_params ->> 'until' IS NULL
               OR ea.created_at < (v_params ->> 'until')::timestamptz)
        LIMIT 1
    ) AS ok ON true
    WHERE ok.id IS NULL
    HAVING count(*) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % is not a standing ban by a faulty rule version of the '
            'incident, inside its window', bad USING ERRCODE = '42501';
    END IF;

    -- No other ban stands on these accounts.
    SELECT format('action %s', min(other.id)) INTO bad
    FROM (SELECT ea.id FROM enforcement_actions ea
          WHERE ea.account_id = ANY (p_account_ids) AND ea.kind = 'ban'
            AND ea.reversed_at IS NULL
          EXCEPT SELECT unnest(p_ban_ids)) AS other
    HAVING count(*) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % is another standing ban: the account stays banned', bad
            USING ERRCODE = '42501';
    END IF;

    UPDATE accounts SET status = 'active', updated_at = v_now
    WHERE id = ANY (p_account_ids) AND status = 'banned';
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> n THEN
        RAISE EXCEPTION 'an account left ''banned'' during the restore; nothing was kept'
            USING ERRCODE = 'RS001';
    END IF;

    -- One unban each, its reason naming the incident and the faulty versions of the bans
    -- it reverses (the same words as steps.UNBAN_REASON).
    WITH faulty AS (
        SELECT DISTINCT b.account_id, (rv.rule_name || '@' || rv.version) COLLATE "C" AS name
        FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
        JOIN LATERAL (SELECT ea.rule_version_id FROM enforcement_actions ea
                      WHERE ea.id = b.ban_id LIMIT 1) AS ban ON true
        JOIN rule_versions rv ON rv.id = ban.rule_version_id
    ), reasons AS (
        SELECT f.account_id, string_agg(f.name, ', ' ORDER BY f.name) AS names
        FROM faulty f GROUP BY f.account_id
    ), written AS (
        INSERT INTO enforcement_actions (account_id, kind, source, rule_version_id, actor,
                                         reason, evidence, created_at)
        SELECT a.account_id, 'unban', 'reinstatement', NULL, 'reinstatement-pipeline',
               format('Reinstated by incident %s: the ban by %s was a mistake', v_key,
                      coalesce(nullif(reasons.names, ''), 'a faulty rule version')),
               NULL, v_now
        FROM unnest(p_account_ids) AS a(account_id)
        LEFT JOIN reasons ON reasons.account_id = a.account_id
        RETURNING enforcement_actions.id, enforcement_actions.account_id
    )
    SELECT array_agg(w.account_id), array_agg(w.id) INTO v_accounts, v_unbans FROM written w;

    -- The checks above found, under the caller's locks, that the standing bans of these
    -- accounts are exactly p_ban_ids: reversing every standing ban of each account is the
    -- same set, reached through the account index from one array (`account_id = ANY`,
    -- which the index answers directly), and the row count below still checks it is
    -- exactly the m bans named.
    UPDATE enforcement_actions ea
    SET reversed_at = v_now, reversed_by_action_id = u.unban_id
    FROM unnest(v_accounts, v_unbans) AS u(account_id, unban_id)
    WHERE ea.account_id = ANY (v_accounts) AND ea.account_id = u.account_id
      AND ea.kind = 'ban' AND ea.reversed_at IS NULL;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> m THEN
        RAISE EXCEPTION 'a ban was lifted by someone else during the restore'
            USING ERRCODE = 'RS001';
    END IF;

    RETURN QUERY
    WITH shown AS (
        UPDATE pins p
        SET status = 'visible', hidden_by_action_id = NULL, updated_at = v_now
        FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
        WHERE p.status = 'hidden' AND p.hidden_by_action_id = b.ban_id
          AND p.account_id = b.account_id
        RETURNING p.account_id
    ), counted AS (
        SELECT s.account_id, count(*)::integer AS n FROM shown s GROUP BY s.account_id
    )
    SELECT a.account_id, u.unban_id, coalesce(c.n, 0)
    FROM unnest(p_account_ids) WITH ORDINALITY AS a(account_id, ord)
    JOIN unnest(v_accounts, v_unbans) AS u(account_id, unban_id) ON u.account_id = a.account_id
    LEFT JOIN counted c ON c.account_id = a.account_id
    ORDER BY a.ord;
END
$fn$;
