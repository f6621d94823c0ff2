-- name: reinstatement-lock-accounts
-- A restore judges each account again under lock. SELECT ... FOR UPDATE needs the UPDATE
-- privilege on the table, which the pipeline's role does not have: this takes the same
-- row locks for it (accounts in id order, then their standing bans), held until the
-- caller's transaction ends. It changes nothing.
CREATE OR REPLACE FUNCTION reinstatement_lock_accounts(p_account_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    locked integer;
BEGIN
    PERFORM 1 FROM accounts WHERE id = ANY (p_account_ids) ORDER BY id FOR UPDATE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    PERFORM 1 FROM enforcement_actions
    WHERE account_id = ANY (p_account_ids) AND kind = 'ban' AND reversed_at IS NULL
    ORDER BY account_id, id
    FOR UPDATE;
    RETURN locked;
END
$fn$;
