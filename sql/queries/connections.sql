-- How each SQLite connection is set up, and how its transactions begin
-- (reinstatement/store/engine.py, reinstatement/store/schema.py).

-- name: enforce_foreign_keys.sqlite
-- References are checked (SQLite's default is not to), on each new connection and again
-- after a migration.
PRAGMA foreign_keys = ON;

-- name: wait_for_the_write_lock.sqlite
-- A writer waits up to a minute for another's transaction to end, not failing at once.
PRAGMA busy_timeout = 60000;

-- name: write_ahead_log.sqlite
-- Readers go on while a writer writes.
PRAGMA journal_mode = WAL;

-- name: sync_at_checkpoints.sqlite
-- Durable at checkpoints, as the write-ahead log allows, not at each commit.
PRAGMA synchronous = NORMAL;

-- name: begin_immediate.sqlite
-- Every transaction takes the database's write lock when it begins: a deferred one could
-- not be upgraded later without a deadlock.
BEGIN IMMEDIATE;

-- name: suspend_foreign_keys.sqlite
-- References unchecked while a migration copies a table to alter it (outside any
-- transaction, where the pragma takes effect).
PRAGMA foreign_keys = OFF;

-- name: broken_references.sqlite
-- The rows whose references point nowhere, checked before a migration commits.
PRAGMA foreign_key_check;
