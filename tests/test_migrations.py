"""The pipeline's own tables: Alembic migrations match the models and never touch the platform."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from reinstatement.db import make_engine
from reinstatement.models import pipeline_metadata
from reinstatement.schema_admin import (
    VERSION_TABLE,
    create_platform,
    current_revision,
    head_revision,
    include_object,
    upgrade_pipeline,
)
from reinstatement.seed import SeedOptions, seed
from tests.factories import snapshot


def test_models_and_migrations_do_not_drift(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        upgrade_pipeline(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_object": include_object,
                "version_table": VERSION_TABLE,
            })
            assert compare_metadata(context, pipeline_metadata) == []
    finally:
        engine.dispose()


def test_every_pipeline_table_is_prefixed(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        upgrade_pipeline(engine)
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
        assert names and all(n.startswith("reinstatement_") for n in names)
        assert VERSION_TABLE in names
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_leaves_the_platform_alone(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        create_platform(engine)
        seed(engine, SeedOptions(accounts=50, seed=7))
        platform_before = snapshot(engine)
        with engine.connect() as conn:
            platform_schema_before = {
                t: inspect(conn).get_columns(t)
                for t in ("accounts", "pins", "rule_versions", "enforcement_actions")
            }
        assert upgrade_pipeline(engine) == (None, head_revision())
        with engine.connect() as conn:
            tables_after_first = sorted(inspect(conn).get_table_names())
        assert upgrade_pipeline(engine) == (head_revision(), head_revision())
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert sorted(inspect(conn).get_table_names()) == tables_after_first
            assert {
                t: inspect(conn).get_columns(t) for t in platform_schema_before
            }.keys() == platform_schema_before.keys()
            for table, columns in platform_schema_before.items():
                assert [str(c) for c in inspect(conn).get_columns(table)] == [
                    str(c) for c in columns]
        assert snapshot(engine) == platform_before
    finally:
        engine.dispose()


def test_upgrade_keeps_the_pipeline_rows_of_an_earlier_revision(empty_db_url: str) -> None:
    from sqlalchemy import text

    engine = make_engine(empty_db_url)
    try:
        create_platform(engine)
        upgrade_pipeline(engine, "0001")
        now = "2025-05-01 00:00:00"
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO reinstatement_incidents (id, key, params, params_digest, status, "
                "created_at, updated_at) VALUES (1, 'INC-1', '{}', 'x', 'running', :t, :t)"),
                {"t": now})
            conn.execute(text(
                "INSERT INTO reinstatement_cases (id, incident_id, account_id, state, "
                "created_at, updated_at) VALUES (7, 1, 42, 'restored', :t, :t)"), {"t": now})
            conn.execute(text(
                "INSERT INTO reinstatement_notices (case_id, incident_id, account_id, "
                "message_id, locale, state, created_at, updated_at) "
                "VALUES (7, 1, 42, '<m@x>', 'en', 'sent', :t, :t)"), {"t": now})
        assert upgrade_pipeline(engine) == ("0001", head_revision())
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT id, account_id, round FROM reinstatement_cases")).all() == [(7, 42, 1)]
            assert conn.execute(text(
                "SELECT case_id FROM reinstatement_notices")).scalars().all() == [7]
    finally:
        engine.dispose()
