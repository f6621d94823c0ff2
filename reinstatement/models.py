"""The pipeline's own tables, all prefixed `reinstatement_`, beside the platform's.

They hold everything the pipeline knows about an incident, so that any step can be
rerun or resumed from what the previous step left:

- an incident and its normalised parameters (the idempotency key),
- the faulty rule versions it names with their corrected versions,
- the operator's list of account ids, when one was given,
- one case per candidate account: its state, outcome, and why,
- the outbox: one notice per reinstated account, with its delivery state,
- an append-only audit trail of every state change,
- one row per run, with its timings.

Schema changes go through the Alembic migrations in `reinstatement/migrations`;
`tests/test_migrations.py` fails if these models and the migrations drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from reinstatement.store.engine import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Our own surrogate keys: BIGINT on PostgreSQL, the auto-numbered rowid on SQLite.
PipelineId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(none_as_null=True)}


class Incident(Base):
    """An incident declared by an operator under a key of their choosing."""

    __tablename__ = "reinstatement_incidents"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    # The normalised parameters the key was registered with; a later run under the
    # same key with other parameters is refused by comparing against these.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    params_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24), server_default=text("'registered'"))
    # Who declared it (an identity: see reinstatement/approval.py) and how that was known
    # ('cli', 'database-role', 'prefect-ui'); nobody may approve their own incident.
    declared_by: Mapped[str | None] = mapped_column(String(100))
    declared_via: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IncidentVersion(Base):
    """A faulty rule version named by an incident, with the version that corrects it."""

    __tablename__ = "reinstatement_incident_versions"

    incident_id: Mapped[int] = mapped_column(
        ForeignKey("reinstatement_incidents.id", ondelete="CASCADE"), primary_key=True
    )
    faulty_rule_version_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    faulty_name: Mapped[str] = mapped_column(String(120))
    corrected_rule_version_id: Mapped[int | None] = mapped_column(BigInteger)
    corrected_name: Mapped[str | None] = mapped_column(String(120))


class IncidentAccount(Base):
    """An account id the operator listed for an incident (`--accounts-file`)."""

    __tablename__ = "reinstatement_incident_accounts"

    incident_id: Mapped[int] = mapped_column(
        ForeignKey("reinstatement_incidents.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class AccountList(Base):
    """A list of account ids an operator named, staged before its incident is registered
    (reinstatement/account_lists.py): written once per digest, never changed."""

    __tablename__ = "reinstatement_account_lists"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    count: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class AccountListMember(Base):
    """One account id of a staged list."""

    __tablename__ = "reinstatement_account_list_members"

    list_id: Mapped[int] = mapped_column(
        ForeignKey("reinstatement_account_lists.id",
                   name="fk_reinstatement_account_list_members_list_id"), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class Suspect(Base):
    """A rule version the nightly reconciliation's fault detection found suspect
    (reinstatement/detection.py): one row per version, first seen once, its newest window
    kept; `alerted_at` is set once its Prefect event went out (until then each nightly
    sends it again)."""

    __tablename__ = "reinstatement_suspects"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    rule_version_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    version: Mapped[str] = mapped_column(String(120))
    since: Mapped[datetime]
    until: Mapped[datetime]
    bans: Mapped[int] = mapped_column(BigInteger)
    score: Mapped[float] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    alerted_at: Mapped[datetime | None]


class Case(Base):
    """One candidate account of one incident, and how far the pipeline has taken it."""

    __tablename__ = "reinstatement_cases"
    __table_args__ = (
        UniqueConstraint("incident_id", "account_id", "round"),
        Index("ix_reinstatement_cases_incident_state", "incident_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    # The incident: checked per statement on PostgreSQL (see the end of this module).
    incident_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_incidents.id"))
    # No foreign key to accounts: an operator may list ids that do not exist
    # (they come out 'skipped'), and the platform's tables are not ours to reference.
    account_id: Mapped[int] = mapped_column(BigInteger)
    # 1 for the incident's own case of the account; 2, 3 ... when the account was banned
    # again by one of the incident's faulty versions after it had been reinstated.
    round: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    state: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(16))
    reasons: Mapped[dict[str, Any] | None]
    faulty_ban_ids: Mapped[list[int] | None] = mapped_column(JSON(none_as_null=True))
    standing_ban_ids: Mapped[list[int] | None] = mapped_column(JSON(none_as_null=True))
    unban_action_id: Mapped[int | None] = mapped_column(BigInteger)
    pins_restored: Mapped[int | None] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None]
    reviewed_by: Mapped[str | None] = mapped_column(String(100))
    review_decision: Mapped[str | None] = mapped_column(String(16))
    review_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Notice(Base):
    """The outbox: one notice per reinstated account, written with the restore."""

    __tablename__ = "reinstatement_notices"
    __table_args__ = (Index("ix_reinstatement_notices_state_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_cases.id"), unique=True)
    # The incident: checked per statement on PostgreSQL (see the end of this module).
    incident_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_incidents.id"))
    account_id: Mapped[int] = mapped_column(BigInteger)
    # Deterministic from the incident key and the account, so a resend after a crash
    # carries the same Message-ID and the recipient's mail system can drop the copy.
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    recipient: Mapped[str | None] = mapped_column(String(320))
    locale: Mapped[str] = mapped_column(String(35))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None]
    # Who holds the notice while it is 'sending': every write of the claim checks it, so a
    # sender whose claim was taken over can neither send nor record under it.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error_code: Mapped[int | None] = mapped_column(Integer)
    last_error_text: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Plan(Base):
    """What a preview showed: every case of the incident with its verdict and the bans it
    would reverse, fixed once written, named by its digest (reinstatement/plans.py;
    written and read by reinstatement/plan_records.py).

    An incident's newest plan is the one that counts: an approval approves a plan, and a
    restore writes only what the newest plan holds, once an operator approved it.
    """

    __tablename__ = "reinstatement_plans"
    __table_args__ = (Index("ix_reinstatement_plans_incident_id_id", "incident_id", "id"),)

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_incidents.id"))
    # sha256 of the plan's lines (plans.plan_digest); NULL only inside the transaction that
    # writes the plan, which sets it from the entries it wrote.
    digest: Mapped[str | None] = mapped_column(String(64))
    cases: Mapped[int] = mapped_column(Integer)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class PlanCase(Base):
    """One case of a plan, as the plan holds it."""

    __tablename__ = "reinstatement_plan_cases"

    plan_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_plans.id"),
                                         primary_key=True)
    case_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(Integer)
    # The outcome it was judged ('' when not judged yet); 'needs_review' for a case a
    # reviewer decided, whatever they decided: a review is not a new judgement.
    verdict: Mapped[str] = mapped_column(String(16))
    # The bans it would reverse, ascending, comma-separated; '' unless the verdict is
    # reinstated or needs_review.
    ban_ids: Mapped[str] = mapped_column(Text)


class Decision(Base):
    """An operator's decision on a plan: approve or reject. Written once, never changed."""

    __tablename__ = "reinstatement_decisions"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_incidents.id"),
                                             index=True)
    # NULL only for decisions recorded before plans existed (migration 0012).
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("reinstatement_plans.id"),
                                                index=True)
    decision: Mapped[str] = mapped_column(String(8))
    decided_by: Mapped[str] = mapped_column(String(100))
    decided_via: Mapped[str] = mapped_column(String(16))
    operator: Mapped[str | None] = mapped_column(String(100))  # a display name
    database_role: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime]


class Review(Base):
    """A reviewer's decision on a case that needed review. Written once, never changed; on
    PostgreSQL only through the owner's function `reinstatement_record_review`."""

    __tablename__ = "reinstatement_reviews"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_incidents.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_cases.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # 'reinstate' or 'uphold'
    reviewed_by: Mapped[str] = mapped_column(String(100))
    reviewed_via: Mapped[str] = mapped_column(String(16))
    database_role: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime]


class AuditEntry(Base):
    """One state change of a case or an incident. Append-only (a trigger refuses edits)."""

    __tablename__ = "reinstatement_audit"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(  # checked per statement: see below
        ForeignKey("reinstatement_incidents.id"), index=True
    )
    case_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    from_state: Mapped[str | None] = mapped_column(String(24))
    to_state: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class Run(Base):
    """One run of an incident (real or dry), with its timings per step."""

    __tablename__ = "reinstatement_runs"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("reinstatement_incidents.id"), index=True
    )
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    dry_run: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    step_seconds: Mapped[dict[str, Any] | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Where the run executes, so a later run can tell a run whose process died ('crashed').
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    # A child run: one of the flow runs an incident run fanned a step out to (it executes
    # batches of `step` only; its parent is the incident run that launched it).
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("reinstatement_runs.id"), index=True
    )
    step: Mapped[str | None] = mapped_column(String(16))


class Batch(Base):
    """One batch a run executed, and where: written in the batch's own transaction (for
    verify and restore), so a batch that rolled back leaves no row."""

    __tablename__ = "reinstatement_batches"

    id: Mapped[int] = mapped_column(PipelineId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reinstatement_runs.id"), index=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("reinstatement_incidents.id"), index=True
    )
    step: Mapped[str] = mapped_column(String(16))
    cases: Mapped[int] = mapped_column(Integer)
    # What the batch came to (outcomes, pins restored, notices sent ...), for the parent of
    # a child run, which may be on another machine.
    detail: Mapped[dict[str, Any] | None]
    # The Prefect worker (its name), host and process that executed the batch.
    worker: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[datetime]


# The incident a case, a notice or an audit row names: SQLite keeps these three as the
# foreign keys declared above; on PostgreSQL they are checked once per statement instead,
# with the same guarantees (migration 0009; schema_admin.CHECKED_PER_STATEMENT): a foreign
# key's check per row was 8% of the processor time of a 100,000-account incident.

pipeline_metadata = Base.metadata
