-- Who runs a command, as the database knows them (reinstatement/approval.py).

-- name: session_role.postgresql
-- The connection's own role and whether it is a superuser (a role that is not the
-- pipeline's and not a superuser names the person).
SELECT session_user::text,
       coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false);
