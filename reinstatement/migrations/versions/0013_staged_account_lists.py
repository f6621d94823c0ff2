"""Lists of account ids are staged in the database, not carried as a run's parameters.

A list of up to 5,000,000 ids (an operator's accounts file, the nightly reconciliation's
uncovered accounts) is written once into `reinstatement_account_lists` and its members,
named by its digest, and a run is given the reference `COUNT:SHA256`; registration copies
it into the incident's accounts (reinstatement/account_lists.py). A flow run's parameters
must stay under 512 KB, which a list of about 76,500 ids passed.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reinstatement_account_lists",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reinstatement_account_lists"),
        sa.UniqueConstraint("sha256", name="uq_reinstatement_account_lists_sha256"),
    )
    op.create_table(
        "reinstatement_account_list_members",
        sa.Column("list_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"], ["reinstatement_account_lists.id"],
            name="fk_reinstatement_account_list_members_list_id"),
        sa.PrimaryKeyConstraint("list_id", "account_id",
                                name="pk_reinstatement_account_list_members"),
    )


def downgrade() -> None:
    op.drop_table("reinstatement_account_list_members")
    op.drop_table("reinstatement_account_lists")
