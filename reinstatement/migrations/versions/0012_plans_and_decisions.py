"""An approval approves a plan: plans, decisions on them, and who declared an incident.

Until now an approval was a flag on the incident, so whatever a later run found was
restored under it. From here on a preview writes a plan (every case with its verdict and
the bans it would reverse, named by a digest), an operator's decision names the plan it
approves or rejects, and a restore of an incident that requires approval writes only what
its newest plan holds, once approved:

- `reinstatement_plans` and `reinstatement_plan_cases`: the plans, fixed once written;
- `reinstatement_decisions`: each decision, written once; the incident's old approval
  columns are carried over into it (with no plan: none existed) and dropped;
- `reinstatement_reviews`: each reviewer's decision on a case, written once (the case
  keeps showing it, but a restore reads the review, which the pipeline's role cannot
  write but through `reinstatement_record_review`);
- `reinstatement_incidents.declared_by` and `declared_via`: who declared it, so that
  nobody approves their own incident.

On PostgreSQL the owner's functions are (re)created from the pinned copies of their
sources under `sql_0012/` (`sql/functions/` holds the current ones): the restore function
now reads the incident's status and its approved plan, refuses a ban by a version the
platform does not mark faulty, and takes neither the actor nor the time from its caller
(its arguments change, so the old one is dropped); `reinstatement_record_decision` is the
only way a decision is written; `reinstatement_plan_digest` hashes a plan's entries.

The guard trigger `sql/least_privilege_role.sql` put on the incidents read the dropped
columns: it is dropped here, and running that script again (as the owner, after this
upgrade) puts back the new one and grants the role what the new tables need. Until then
the role can neither write a plan nor record a decision: an incident that requires
approval restores nothing.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PINNED = Path(__file__).resolve().parent / "sql_0012"
# Each function's file and the signature its privileges are revoked on.
FUNCTIONS = {
    "reinstatement_check_person.sql": "reinstatement_check_person(text, text, text)",
    "reinstatement_restore_accounts.sql":
        "reinstatement_restore_accounts(bigint[], bigint[], bigint[], bigint[])",
    "reinstatement_lock_accounts.sql": "reinstatement_lock_accounts(bigint[])",
    "reinstatement_plan_digest.sql": "reinstatement_plan_digest(bigint)",
    "reinstatement_record_decision.sql":
        "reinstatement_record_decision(bigint, text, text, text, text, text, text)",
    "reinstatement_record_review.sql":
        "reinstatement_record_review(bigint, text, text, text, text)",
}
OLD_RESTORE = ("reinstatement_restore_accounts(bigint[], bigint[], text[], bigint[], "
               "bigint[], text, timestamp with time zone)")
APPROVAL_COLUMNS = ("approval", "approved_by", "approval_note", "approval_decided_at")


def create_functions(pinned: Path, functions: dict[str, str]) -> None:
    """Create each function from its pinned source, with a search path of the current
    schema and then pg_temp (captured by `SET search_path FROM CURRENT`)."""
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    # Through the driver's own connection (same transaction): the bodies' % signs are
    # PL/pgSQL's, not parameter markers.
    driver = bind.connection.driver_connection
    driver.execute(f"SET LOCAL search_path = {schema}, pg_temp")
    for name, signature in functions.items():
        driver.execute((pinned / name).read_text(encoding="utf-8"))
        # Functions are executable by everyone by default: only the owner and the roles
        # granted them (sql/least_privilege_role.sql) may call these.
        driver.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
    driver.execute("RESET search_path")


def upgrade() -> None:
    op.create_table(
        "reinstatement_plans",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["reinstatement_incidents.id"],
                                name="fk_reinstatement_plans_incident_id_reinstatement_incidents"),
        sa.PrimaryKeyConstraint("id", name="pk_reinstatement_plans"),
    )
    op.create_index("ix_reinstatement_plans_incident_id_id", "reinstatement_plans",
                    ["incident_id", "id"])
    op.create_table(
        "reinstatement_plan_cases",
        sa.Column("plan_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("ban_ids", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["reinstatement_plans.id"],
                                name="fk_reinstatement_plan_cases_plan_id_reinstatement_plans"),
        sa.PrimaryKeyConstraint("plan_id", "case_id", name="pk_reinstatement_plan_cases"),
    )
    op.create_table(
        "reinstatement_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("plan_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=True),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=False),
        sa.Column("decided_via", sa.String(16), nullable=False),
        sa.Column("operator", sa.String(100), nullable=True),
        sa.Column("database_role", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["reinstatement_incidents.id"],
            name="fk_reinstatement_decisions_incident_id_reinstatement_incidents"),
        sa.ForeignKeyConstraint(["plan_id"], ["reinstatement_plans.id"],
                                name="fk_reinstatement_decisions_plan_id_reinstatement_plans"),
        sa.PrimaryKeyConstraint("id", name="pk_reinstatement_decisions"),
    )
    op.create_index("ix_reinstatement_decisions_incident_id", "reinstatement_decisions",
                    ["incident_id"])
    op.create_index("ix_reinstatement_decisions_plan_id", "reinstatement_decisions",
                    ["plan_id"])
    op.create_table(
        "reinstatement_reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("case_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reviewed_by", sa.String(100), nullable=False),
        sa.Column("reviewed_via", sa.String(16), nullable=False),
        sa.Column("database_role", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["reinstatement_incidents.id"],
            name="fk_reinstatement_reviews_incident_id_reinstatement_incidents"),
        sa.ForeignKeyConstraint(["case_id"], ["reinstatement_cases.id"],
                                name="fk_reinstatement_reviews_case_id_reinstatement_cases"),
        sa.PrimaryKeyConstraint("id", name="pk_reinstatement_reviews"),
    )
    op.create_index("ix_reinstatement_reviews_case_id", "reinstatement_reviews", ["case_id"])
    # Reviews taken before this revision, kept as they were recorded on their cases.
    op.execute(
        "INSERT INTO reinstatement_reviews (incident_id, case_id, decision, reviewed_by, "
        "reviewed_via, database_role, note, decided_at) "
        "SELECT incident_id, id, review_decision, coalesce(reviewed_by, 'unknown'), "
        "'before-plans', NULL, coalesce(review_note, ''), updated_at "
        "FROM reinstatement_cases WHERE review_decision IS NOT NULL ORDER BY id")
    # Decisions taken before plans existed, kept with no plan.
    op.execute(
        "INSERT INTO reinstatement_decisions (incident_id, plan_id, decision, decided_by, "
        "decided_via, operator, database_role, note, decided_at) "
        "SELECT id, NULL, CASE approval WHEN 'approved' THEN 'approve' ELSE 'reject' END, "
        "coalesce(approved_by, 'unknown'), 'before-plans', approved_by, NULL, "
        "coalesce(approval_note, ''), coalesce(approval_decided_at, updated_at) "
        "FROM reinstatement_incidents WHERE approval IS NOT NULL ORDER BY id")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS reinstatement_guard_incident "
                   "ON reinstatement_incidents")
    with op.batch_alter_table("reinstatement_incidents") as batch:
        batch.add_column(sa.Column("declared_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("declared_via", sa.String(16), nullable=True))
        for column in APPROVAL_COLUMNS:
            batch.drop_column(column)
    if bind.dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {OLD_RESTORE}")
        create_functions(PINNED, FUNCTIONS)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for signature in FUNCTIONS.values():
            if "lock_accounts" not in signature:
                op.execute(f"DROP FUNCTION IF EXISTS {signature}")
        op.execute("DROP TRIGGER IF EXISTS reinstatement_guard_incident "
                   "ON reinstatement_incidents")
    with op.batch_alter_table("reinstatement_incidents") as batch:
        batch.add_column(sa.Column("approval", sa.String(16), nullable=True))
        batch.add_column(sa.Column("approved_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("approval_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("approval_decided_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.drop_column("declared_via")
        batch.drop_column("declared_by")
    op.drop_table("reinstatement_reviews")
    op.drop_table("reinstatement_decisions")
    op.drop_table("reinstatement_plan_cases")
    op.drop_table("reinstatement_plans")
    if bind.dialect.name == "postgresql":
        from importlib import import_module

        previous = import_module(
            "reinstatement.migrations.versions.0011_cases_rewritten_in_place")
        previous._created._create(previous.function_body())
