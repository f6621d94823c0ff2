"""The restore function reaches a batch's bans through the account index, always.

Migration 0008 meant the ban reversal to look each account's standing bans up through
`ix_enforcement_actions_account_id`, but the planner estimated that index scan dearer
than reading every standing action into a hash table: at 100,000 accounts it read
83,000 standing bans for each batch of 3,600 accounts (21 of the statement's 46 ms), and
the table grows with every incident. The UPDATE now also names the accounts as
`account_id = ANY (accounts)`, which is true of every row the join keeps (the same rows
are reversed), and which the index answers directly: a scan of the whole table would
have to compare each row with the whole array, and the planner prices it so. Measured
on one batch of 5,267 accounts at 100,000: 61.6 ms before, 42.6 ms after.

Nothing else in the function changes: the same checks before it, the same row count
after it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_previous = importlib.import_module(
    "reinstatement.migrations.versions.0008_restore_function_ban_lookup")

BEFORE = _previous.AFTER
AFTER = """    UPDATE enforcement_actions ea
    SET reversed_at = p_now, reversed_by_action_id = u.unban_id
    FROM unnest(v_accounts, v_unbans) AS u(account_id, unban_id)
    WHERE ea.account_id = ANY (v_accounts) AND ea.account_id = u.account_id
      AND ea.kind = 'ban' AND ea.reversed_at IS NULL;
"""


def function_body(previous: str | None = None) -> str:
    """0008's function with the ban reversal's lookup through the account index."""
    previous = _previous.function_body() if previous is None else previous
    if previous.count(BEFORE) != 1:
        raise RuntimeError("migration 0010: the ban reversal of migration 0008 was not found")
    return previous.replace(BEFORE, AFTER)


def upgrade() -> None:
    _previous._create(function_body())


def downgrade() -> None:
    _previous._create(_previous.function_body())
