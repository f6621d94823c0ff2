"""Suspect rule versions found by the nightly reconciliation's fault detection.

One row per rule version `reinstatement.detection` found suspect: when it was first and
last seen, its newest window and score, the suspect as `reinstate detect --json` prints
it, and when its Prefect event went out.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reinstatement_suspects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True),
        sa.Column("rule_version_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(120), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bans", sa.BigInteger(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reinstatement_suspects"),
        sa.UniqueConstraint("rule_version_id",
                            name="uq_reinstatement_suspects_rule_version_id"),
    )


def downgrade() -> None:
    op.drop_table("reinstatement_suspects")
