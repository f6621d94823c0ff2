"""Whether an incident needs an operator's approval becomes one of its key's parameters.

Incidents registered before this revision carry no `require_approval` in their parameters.
An incident an operator has decided on, or that waits for one, needed approval; any other
is recorded as not needing it, which is how its runs went. The digest of the parameters
is computed again over the completed parameters.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

incidents = sa.table(
    "reinstatement_incidents",
    sa.column("id", sa.BigInteger()),
    sa.column("params", sa.JSON()),
    sa.column("params_digest", sa.String()),
    sa.column("status", sa.String()),
    sa.column("approval", sa.String()),
)


def _rewrite(complete: bool) -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(incidents.c.id, incidents.c.params, incidents.c.status,
                                  incidents.c.approval)).all()
    for row in rows:
        params = dict(row.params or {})
        if complete:
            if "require_approval" in params:
                continue
            params["require_approval"] = row.approval is not None or row.status in (
                "awaiting_approval", "approved", "rejected")
        else:
            params.pop("require_approval", None)
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        conn.execute(sa.update(incidents).where(incidents.c.id == row.id)
                     .values(params=params, params_digest=digest))


def upgrade() -> None:
    _rewrite(complete=True)


def downgrade() -> None:
    _rewrite(complete=False)
