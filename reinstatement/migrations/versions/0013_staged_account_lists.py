"""Lists of account ids are staged in the database; statistics are refreshed before a run.

A list of up to 5,000,000 ids (an operator's accounts file, the nightly reconciliation's
uncovered accounts) is written once into `reinstatement_account_lists` and its members,
named by its digest, and a run is given the reference `COUNT:SHA256`; registration copies
it into the incident's accounts (reinstatement/account_lists.py). A flow run's parameters
must stay under 512 KB, which a list of about 76,500 ids passed.

On PostgreSQL, `reinstatement_refresh_statistics` (from the pinned copy of its source
under `sql_0013/`) ANALYZEs the tables an incident's statements read where their
statistics are missing or stale: without them a 100,000-account incident took 326 s
instead of 16.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PINNED = Path(__file__).resolve().parent / "sql_0013"
FUNCTIONS = {"reinstatement_refresh_statistics.sql": "reinstatement_refresh_statistics()"}


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
    if op.get_bind().dialect.name == "postgresql":
        _functions().create_functions(PINNED, FUNCTIONS)


def _functions() -> Any:
    return importlib.import_module(
        "reinstatement.migrations.versions.0012_plans_and_decisions")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS reinstatement_refresh_statistics()")
    op.drop_table("reinstatement_account_list_members")
    op.drop_table("reinstatement_account_lists")
