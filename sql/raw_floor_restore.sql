-- The raw-SQL floor of the restore: the platform writes of a reinstatement (accounts,
-- unbans, ban reversals, pins) as four set-based statements, PostgreSQL only.
--
-- Used by bench/pipeline_bench.py (timed against the pipeline) and by
-- tests/test_bench_smoke.py (checked to leave the platform exactly as the pipeline does).
-- The set of accounts to reinstate is NOT computed here: the caller loads the account ids
-- the pipeline itself restored into floor_reinstated, so both sides write the same set and
-- the floor measures only the writes, not the judging of evidence.
--
-- Run the blocks in order, in ONE transaction (the contract: no account half restored).
-- Parameters: :now (timestamptz, every updated_at / created_at / reversed_at),
-- :actor and :reason (the unban action's actor and reason).
-- Safe to re-run with the same set: only accounts this run moves out of 'banned' get an
-- unban, and every later write follows from those unbans, so a second run changes nothing.

-- name: create-reinstated-set
-- The accounts to reinstate, and the unban written for each. Temporary and dropped at
-- commit: the floor leaves no table of its own behind in the platform database.
CREATE TEMPORARY TABLE floor_reinstated (
    account_id BIGINT PRIMARY KEY,
    activated BOOLEAN NOT NULL DEFAULT false,
    unban_id BIGINT
) ON COMMIT DROP;

-- name: analyze-reinstated-set
-- After the ids are loaded (COPY): without statistics the planner assumes a tiny table
-- and picks nested loops over millions of pins.
ANALYZE floor_reinstated;

-- name: activate-accounts
-- Only accounts still banned (a moderator's change since the ids were chosen wins), and
-- the set remembers which ones this run activated: only those get an unban below.
WITH activated AS (
    UPDATE accounts AS a
    SET status = 'active', updated_at = :now
    FROM floor_reinstated AS f
    WHERE a.id = f.account_id
      AND a.status = 'banned'
    RETURNING a.id
)
UPDATE floor_reinstated AS f
SET activated = true
FROM activated
WHERE f.account_id = activated.id;

-- name: write-unbans
-- One 'unban' per account; the CTE hands each new id back to its account in the same
-- statement, so no second lookup of the inserted rows is needed.
WITH unbans AS (
    INSERT INTO enforcement_actions
        (account_id, kind, source, rule_version_id, actor, reason, evidence, created_at)
    SELECT f.account_id, 'unban', 'reinstatement', NULL, :actor, :reason, NULL, :now
    FROM floor_reinstated AS f
    WHERE f.activated
    ORDER BY f.account_id
    RETURNING id, account_id
)
UPDATE floor_reinstated AS f
SET unban_id = unbans.id
FROM unbans
WHERE f.account_id = unbans.account_id;

-- name: reverse-bans
-- Every standing ban of a reinstated account: for outcome 'reinstated' the contract
-- requires each standing ban to be a wrongful faulty ban, so "standing" is the whole set.
UPDATE enforcement_actions AS b
SET reversed_at = :now, reversed_by_action_id = f.unban_id
FROM floor_reinstated AS f
WHERE b.account_id = f.account_id
  AND b.kind = 'ban'
  AND b.reversed_at IS NULL;

-- name: restore-pins
-- Exactly the hidden pins that the bans just reversed had hidden on their own account;
-- a pin hidden by its owner, or by an older already-reversed ban, stays hidden.
UPDATE pins AS p
SET status = 'visible', hidden_by_action_id = NULL, updated_at = :now
FROM enforcement_actions AS b, floor_reinstated AS f
WHERE p.hidden_by_action_id = b.id
  AND b.reversed_by_action_id = f.unban_id
  AND b.account_id = f.account_id
  AND p.account_id = f.account_id
  AND p.status = 'hidden';
