-- The advisory locks that hold a claim for as long as its holder's session lives
-- (reinstatement/holders.py). A claim's key is computed by PostgreSQL from the claim's
-- text, as `holders.lock_key()` computes it for those who ask whether the holder is gone
-- (tests/test_outbox.py holds the two spellings to each other).

-- name: hold_claim.postgresql
-- Take the claim's session-level lock, waiting for it if another session holds it.
SELECT pg_advisory_lock(('x' || substr(md5(:claim), 1, 16))::bit(64)::bigint);

-- name: release_claim.postgresql
-- Let the claim's session-level lock go.
SELECT pg_advisory_unlock(('x' || substr(md5(:claim), 1, 16))::bit(64)::bigint);
