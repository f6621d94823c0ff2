"""A settle batch writes each reinstated case's restore in place.

A run that needs no approval verifies and restores a batch in one transaction
(`steps.settle_batch`). Each reinstated case was written twice in it: its verdict (state
`verified`), then its restore (state `restored`, the unban and the pins). Both changed
the state, which `ix_reinstatement_cases_incident_state` holds, so each wrote a new entry
into all three of the table's indexes: about 150,000 index entries to reinstate 100,000
accounts, for rows no other transaction ever sees in between.

Now the verdict writes such a case as `restored` at once, and the restore writes only its
unban, its pins and the time: no indexed column changes, and with room left on each page
(fillfactor 50) PostgreSQL writes that version beside the last one without touching an
index (a heap-only tuple).

The restore function (migration 0006) took only a `verified` reinstatement. It now also
takes a reinstatement that this very transaction wrote as `restored` with no unban yet:
the verdict of the same settle batch. A case restored earlier has its unban, and a row
another transaction wrote is refused as before; the function's other checks are unchanged.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_created = importlib.import_module(
    "reinstatement.migrations.versions.0008_restore_function_ban_lookup")
_previous = importlib.import_module(
    "reinstatement.migrations.versions.0010_restore_function_ban_index")

BEFORE = """        WHERE c.id = r.case_id AND c.account_id = r.account_id AND c.state = 'verified'
          AND (c.outcome = 'reinstated' OR c.review_decision = 'reinstate')
"""
# `xmin`: the transaction that wrote this version of the row; `pg_current_xact_id()`: this
# one (the pipeline opens no savepoints, so its writes carry the top transaction's id).
AFTER = """        WHERE c.id = r.case_id AND c.account_id = r.account_id
          AND (c.state = 'verified'
               OR (c.state = 'restored' AND c.unban_action_id IS NULL
                   AND c.xmin = pg_current_xact_id()::xid))
          AND (c.outcome = 'reinstated' OR c.review_decision = 'reinstate')
"""

FILLFACTOR = 50


def function_body(previous: str | None = None) -> str:
    """0010's function, taking also the reinstatements this transaction verified."""
    previous = _previous.function_body() if previous is None else previous
    if previous.count(BEFORE) != 1:
        raise RuntimeError("migration 0011: the case check of migration 0006 was not found")
    return previous.replace(BEFORE, AFTER)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE reinstatement_cases SET (fillfactor = {FILLFACTOR})")
    _created._create(function_body())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE reinstatement_cases RESET (fillfactor)")
    _created._create(_previous.function_body())
