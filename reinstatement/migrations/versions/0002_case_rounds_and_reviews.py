"""Cases get a round (an account banned again after reinstatement) and a review decision.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reinstatement_cases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("round", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )
        batch_op.add_column(sa.Column("review_decision", sa.String(length=16), nullable=True))
        batch_op.drop_constraint(
            "uq_reinstatement_cases_incident_id_account_id", type_="unique"
        )
        batch_op.create_unique_constraint(
            "uq_reinstatement_cases_incident_id_account_id_round",
            ["incident_id", "account_id", "round"],
        )


def downgrade() -> None:
    with op.batch_alter_table("reinstatement_cases", schema=None) as batch_op:
        batch_op.drop_constraint(
            "uq_reinstatement_cases_incident_id_account_id_round", type_="unique"
        )
        batch_op.create_unique_constraint(
            "uq_reinstatement_cases_incident_id_account_id", ["incident_id", "account_id"]
        )
        batch_op.drop_column("review_decision")
        batch_op.drop_column("round")
