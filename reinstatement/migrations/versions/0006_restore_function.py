"""On PostgreSQL, a restore's platform writes are one function that checks them first.

`reinstatement_restore_accounts` performs exactly what the contract lets a reinstatement
write, for a batch of accounts, and refuses anything else: it runs as the owner of the
tables (SECURITY DEFINER), so the pipeline's own role needs no write privilege on the
platform's tables at all (`sql/least_privilege_role.sql` grants it only EXECUTE). The
platform's tables themselves are not altered: no trigger, policy or column is added to
them.

Before it writes, it checks, for every account of the batch:
- its case is a verified reinstatement of that account (outcome 'reinstated', or a
  reviewer's decision to reinstate);
- every ban it is asked to reverse is a standing 'ban' from the rules engine on that
  account, by a rule version the case's incident names as faulty, inside the incident's
  window;
- the account has no other standing ban (a moderator's ban keeps it banned);
- the account is 'banned'.
Any failed check raises and the whole batch is rolled back, platform rows untouched.

Then, in the caller's transaction: the account becomes 'active', one 'unban' action with
source 'reinstatement' is written, each named ban is reversed by it, and exactly the
hidden pins those bans hid on the account become visible. It returns, per account in the
order given, the unban action's id and the number of pins restored.

On SQLite (the embedded default, one local user) the same writes are plain statements in
`reinstatement/steps.py`; this migration does nothing there.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = ("reinstatement_restore_accounts(bigint[], bigint[], text[], bigint[], bigint[], "
             "text, timestamp with time zone)")
LOCK_SIGNATURE = "reinstatement_lock_accounts(bigint[])"

# SQLSTATEs: 42501 (insufficient_privilege) for a write the contract does not allow,
# RS001 for a platform row that changed under the batch (the caller's locks should make
# that impossible; it is checked all the same).
FUNCTION = r"""
CREATE OR REPLACE FUNCTION reinstatement_restore_accounts(
    p_case_ids bigint[], p_account_ids bigint[], p_reasons text[],
    p_ban_ids bigint[], p_ban_accounts bigint[], p_actor text, p_now timestamptz)
RETURNS TABLE (restored_account_id bigint, unban_action_id bigint, pins_restored integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = {schema}, pg_temp
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
    v_accounts bigint[];
    v_unbans bigint[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF coalesce(cardinality(p_case_ids), 0) <> n OR coalesce(cardinality(p_reasons), 0) <> n
       OR coalesce(cardinality(p_ban_accounts), 0) <> m OR m = 0 THEN
        RAISE EXCEPTION 'reinstatement_restore_accounts: the arrays do not line up'
            USING ERRCODE = '22023';
    END IF;
    IF p_actor IS NULL OR btrim(p_actor) = '' OR p_now IS NULL THEN
        RAISE EXCEPTION 'reinstatement_restore_accounts: an actor and a time are needed'
            USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(DISTINCT a) FROM unnest(p_account_ids) AS a) <> n
       OR (SELECT count(DISTINCT b) FROM unnest(p_ban_ids) AS b) <> m THEN
        RAISE EXCEPTION 'reinstatement_restore_accounts: an account or a ban is named twice'
            USING ERRCODE = '22023';
    END IF;

    -- Each case is a verified reinstatement of its account.
    SELECT format('case %s', min(r.case_id)) INTO bad
    FROM unnest(p_case_ids, p_account_ids) AS r(case_id, account_id)
    LEFT JOIN LATERAL (
        SELECT c.id FROM reinstatement_cases c
        WHERE c.id = r.case_id AND c.account_id = r.account_id AND c.state = 'verified'
          AND (c.outcome = 'reinstated' OR c.review_decision = 'reinstate')
        LIMIT 1
    ) AS ok ON true
    WHERE ok.id IS NULL
    HAVING count(*) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % is not a verified reinstatement', bad
            USING ERRCODE = '42501';
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

    -- Each ban is a standing rules-engine ban on its account, by a version the case's
    -- incident names as faulty, inside the incident's window (from the second round on,
    -- a ban after the window's end counts too: the incident's own rule banned again).
    SELECT format('action %s', min(b.ban_id)) INTO bad
    FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
    JOIN unnest(p_case_ids, p_account_ids) AS r(case_id, account_id)
      ON r.account_id = b.account_id
    LEFT JOIN LATERAL (
        SELECT ea.id
        FROM enforcement_actions ea
        JOIN reinstatement_cases c ON c.id = r.case_id
        JOIN reinstatement_incidents i ON i.id = c.incident_id
        WHERE ea.id = b.ban_id AND ea.account_id = b.account_id AND ea.kind = 'ban'
          AND ea.source = 'rule' AND ea.reversed_at IS NULL
          AND EXISTS (SELECT 1 FROM reinstatement_incident_versions v
                      WHERE v.incident_id = c.incident_id
                        AND v.faulty_rule_version_id = ea.rule_version_id)
          AND (i.params ->> 'since' IS NULL
               OR ea.created_at >= (i.params ->> 'since')::timestamptz)
          AND (c.round > 1 OR i.params ->> 'until' IS NULL
               OR ea.created_at < (i.params ->> 'until')::timestamptz)
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

    UPDATE accounts SET status = 'active', updated_at = p_now
    WHERE id = ANY (p_account_ids) AND status = 'banned';
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> n THEN
        RAISE EXCEPTION 'an account left ''banned'' during the restore; nothing was kept'
            USING ERRCODE = 'RS001';
    END IF;

    WITH written AS (
        INSERT INTO enforcement_actions (account_id, kind, source, rule_version_id, actor,
                                         reason, evidence, created_at)
        SELECT u.account_id, 'unban', 'reinstatement', NULL, p_actor, u.reason, NULL, p_now
        FROM unnest(p_account_ids, p_reasons) AS u(account_id, reason)
        RETURNING enforcement_actions.id, enforcement_actions.account_id
    )
    SELECT array_agg(w.account_id), array_agg(w.id) INTO v_accounts, v_unbans FROM written w;

    UPDATE enforcement_actions ea
    SET reversed_at = p_now, reversed_by_action_id = u.unban_id
    FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
    JOIN unnest(v_accounts, v_unbans) AS u(account_id, unban_id) ON u.account_id = b.account_id
    WHERE ea.id = b.ban_id AND ea.reversed_at IS NULL;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> m THEN
        RAISE EXCEPTION 'a ban was lifted by someone else during the restore'
            USING ERRCODE = 'RS001';
    END IF;

    RETURN QUERY
    WITH shown AS (
        UPDATE pins p
        SET status = 'visible', hidden_by_action_id = NULL, updated_at = p_now
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
$fn$
"""

# A restore judges each account again under lock. SELECT ... FOR UPDATE needs UPDATE
# privilege on the table, which the pipeline's role no longer has: this takes the same row
# locks for it (accounts in id order, then their standing bans), held until the caller's
# transaction ends. It changes nothing.
LOCK_FUNCTION = r"""
CREATE OR REPLACE FUNCTION reinstatement_lock_accounts(p_account_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = {schema}, pg_temp
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
$fn$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    # Through the driver's own connection (same transaction): the body's % signs are
    # PL/pgSQL's, not parameter markers.
    driver = bind.connection.driver_connection
    for body, signature in ((FUNCTION, SIGNATURE), (LOCK_FUNCTION, LOCK_SIGNATURE)):
        driver.execute(body.replace("{schema}", schema))
        # Functions are executable by everyone by default: only the owner and the roles
        # granted them (sql/least_privilege_role.sql) may call these.
        driver.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {LOCK_SIGNATURE}")
