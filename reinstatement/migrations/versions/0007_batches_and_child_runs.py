"""Where each batch ran, and the child runs an incident run fans its steps out to.

`reinstatement_batches`: one row per batch a run executed (its step, cases, what it came
to, and the worker, host and process that executed it). `reinstatement_runs` gains the
parent run and the step of a child run.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from reinstatement.store.engine import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("reinstatement_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_run_id", ID, nullable=True))
        batch_op.add_column(sa.Column("step", sa.String(length=16), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_reinstatement_runs_parent_run_id_reinstatement_runs"),
            "reinstatement_runs", ["parent_run_id"], ["id"],
        )
        batch_op.create_index(
            batch_op.f("ix_reinstatement_runs_parent_run_id"), ["parent_run_id"], unique=False
        )

    op.create_table(
        "reinstatement_batches",
        sa.Column("id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("incident_id", ID, nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["reinstatement_runs.id"],
            name=op.f("fk_reinstatement_batches_run_id_reinstatement_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["reinstatement_incidents.id"],
            name=op.f("fk_reinstatement_batches_incident_id_reinstatement_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reinstatement_batches")),
    )
    with op.batch_alter_table("reinstatement_batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reinstatement_batches_run_id"), ["run_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reinstatement_batches_incident_id"), ["incident_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reinstatement_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reinstatement_batches_incident_id"))
        batch_op.drop_index(batch_op.f("ix_reinstatement_batches_run_id"))
    op.drop_table("reinstatement_batches")
    with op.batch_alter_table("reinstatement_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reinstatement_runs_parent_run_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_reinstatement_runs_parent_run_id_reinstatement_runs"),
            type_="foreignkey",
        )
        batch_op.drop_column("step")
        batch_op.drop_column("parent_run_id")
