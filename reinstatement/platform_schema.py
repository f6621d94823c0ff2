"""The platform's four tables, exactly as docs/platform-contract.md fixes them.

The platform owns these tables. In production they already exist and the pipeline
never creates or alters them; `reinstate db create-platform` creates them only for
local runs, the demo and the tests. The pipeline's own tables live in `models.py`.

Ids are BIGINT primary keys that the database assigns (an identity on PostgreSQL; on
SQLite the 64-bit INTEGER PRIMARY KEY, the only column SQLite numbers by itself): the
pipeline writes one new row, the 'unban' action, and lets the platform number it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from reinstatement.store.engine import UTCDateTime

platform_metadata = MetaData()

# BIGINT everywhere; on SQLite the primary key must be spelt INTEGER to be the rowid.
PlatformId = BigInteger().with_variant(Integer(), "sqlite")


def _id_column() -> Column[int]:
    return Column("id", PlatformId, Identity(always=False), primary_key=True)


accounts = Table(
    "accounts",
    platform_metadata,
    _id_column(),
    Column("username", String(64), nullable=False),
    Column("display_name", String(200), nullable=True),
    Column("email", String(320), nullable=True),
    Column("locale", String(35), nullable=False, server_default=text("'en'")),
    Column("status", String(16), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("username", name="uq_accounts_username"),
)

rule_versions = Table(
    "rule_versions",
    platform_metadata,
    _id_column(),
    Column("rule_name", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("condition", JSON(none_as_null=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("deployed_at", UTCDateTime(), nullable=False),
    UniqueConstraint("rule_name", "version", name="uq_rule_versions_rule_name_version"),
)

enforcement_actions = Table(
    "enforcement_actions",
    platform_metadata,
    _id_column(),
    Column(
        "account_id",
        BigInteger,
        ForeignKey("accounts.id", name="fk_enforcement_actions_account_id"),
        nullable=False,
    ),
    Column("kind", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column(
        "rule_version_id",
        BigInteger,
        ForeignKey("rule_versions.id", name="fk_enforcement_actions_rule_version_id"),
        nullable=True,
    ),
    Column("actor", String(100), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", JSON(none_as_null=True), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("reversed_at", UTCDateTime(), nullable=True),
    Column(
        "reversed_by_action_id",
        BigInteger,
        ForeignKey("enforcement_actions.id", name="fk_enforcement_actions_reversed_by_action_id"),
        nullable=True,
    ),
    Index("ix_enforcement_actions_account_id", "account_id"),
    Index("ix_enforcement_actions_created_at", "created_at"),
)

pins = Table(
    "pins",
    platform_metadata,
    _id_column(),
    Column(
        "account_id",
        BigInteger,
        ForeignKey("accounts.id", name="fk_pins_account_id"),
        nullable=False,
    ),
    Column("title", String(200), nullable=True),
    Column("status", String(16), nullable=False),
    Column(
        "hidden_by_action_id",
        BigInteger,
        ForeignKey("enforcement_actions.id", name="fk_pins_hidden_by_action_id"),
        nullable=True,
    ),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_pins_account_id", "account_id"),
    Index("ix_pins_hidden_by_action_id", "hidden_by_action_id"),
)

PLATFORM_TABLES = ("accounts", "rule_versions", "enforcement_actions", "pins")


def create_platform_tables(conn: Connection) -> list[str]:
    """Create whichever platform tables are missing; returns the names it created."""
    from sqlalchemy import inspect

    existing = set(inspect(conn).get_table_names())
    missing = [name for name in PLATFORM_TABLES if name not in existing]
    platform_metadata.create_all(conn, tables=[platform_metadata.tables[n] for n in missing])
    return missing
