"""The restore function reverses a batch's bans through the account index.

`reinstatement_restore_accounts` (migration 0006) reversed a batch's bans with an UPDATE
joined to two of its arrays, whose sizes the planner cannot see: it read every standing
action of `enforcement_actions` into a hash table for each batch (about 90 ms a batch at
100k accounts, and growing with the table), and a generic plan could join the two arrays
in a nested loop. It now reverses each account's standing bans, looked up through the
account index from one array. The checks before it already found, under the caller's
locks, that those are exactly the bans named, and the row count after it still checks
that exactly those were reversed. Nothing else in the function changes.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_previous = importlib.import_module("reinstatement.migrations.versions.0006_restore_function")

BEFORE = """    UPDATE enforcement_actions ea
    SET reversed_at = p_now, reversed_by_action_id = u.unban_id
    FROM unnest(p_ban_ids, p_ban_accounts) AS b(ban_id, account_id)
    JOIN unnest(v_accounts, v_unbans) AS u(account_id, unban_id) ON u.account_id = b.account_id
    WHERE ea.id = b.ban_id AND ea.reversed_at IS NULL;
"""
# The checks above found, under the caller's locks, that the standing bans of these
# accounts are exactly p_ban_ids: reversing every standing ban of each account is the same
# set, reached through the account index from one array (no join of two arrays, which a
# generic plan may run as a nested loop: 27 million comparisons and 3.4 s a batch), and
# the row count below still checks it is exactly the m bans named.
AFTER = """    UPDATE enforcement_actions ea
    SET reversed_at = p_now, reversed_by_action_id = u.unban_id
    FROM unnest(v_accounts, v_unbans) AS u(account_id, unban_id)
    WHERE ea.account_id = u.account_id AND ea.kind = 'ban' AND ea.reversed_at IS NULL;
"""


def function_body(previous: str = _previous.FUNCTION) -> str:
    """0006's function with the ban reversal through the account index."""
    if previous.count(BEFORE) != 1:
        raise RuntimeError("migration 0008: the ban reversal of migration 0006 was not found")
    return previous.replace(BEFORE, AFTER)


def _create(body: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    driver = bind.connection.driver_connection
    # CREATE OR REPLACE keeps the function's privileges (EXECUTE revoked from PUBLIC).
    driver.execute(body.replace("{schema}", schema))


def upgrade() -> None:
    _create(function_body())


def downgrade() -> None:
    _create(_previous.FUNCTION)
