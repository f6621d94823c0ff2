"""The pipeline's own tables: Alembic migrations match the models and never touch the platform."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from reinstatement.models import pipeline_metadata
from reinstatement.seed import SeedOptions, seed
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import (
    VERSION_TABLE,
    create_platform,
    current_revision,
    head_revision,
    include_object,
    upgrade_pipeline,
)
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


def _registered_incident(engine: Any) -> int:
    from sqlalchemy import text

    with engine.begin() as conn:
        return int(conn.execute(text(
            "INSERT INTO reinstatement_incidents (key, params, params_digest, status, "
            "created_at, updated_at) VALUES ('INC-REF', '{}', 'x', 'running', "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id")).scalar_one())


_ROWS_NAMING = {
    "a case": "INSERT INTO reinstatement_cases (incident_id, account_id, state, created_at, "
              "updated_at) SELECT :incident, 42 + n, 'planned', CURRENT_TIMESTAMP, "
              "CURRENT_TIMESTAMP FROM (SELECT 0 AS n UNION ALL SELECT 1) AS two",
    "an audit row": "INSERT INTO reinstatement_audit (incident_id, case_id, from_state, "
                    "to_state, actor, reason, at) VALUES (:incident, NULL, NULL, 'running', "
                    "'test', 'test', CURRENT_TIMESTAMP)",
    "a notice": "INSERT INTO reinstatement_notices (case_id, incident_id, account_id, "
                "message_id, locale, state, created_at, updated_at) SELECT c.id, :incident, "
                "c.account_id, '<m' || c.id || '@x>', 'en', 'pending', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP FROM reinstatement_cases AS c",
}


@pytest.mark.parametrize("what", sorted(_ROWS_NAMING))
def test_rows_that_name_an_incident_that_does_not_exist_are_refused(
    db_url: str, what: str
) -> None:
    """Cases, notices and audit rows name their incident: a foreign key on SQLite, a check
    per statement on PostgreSQL (migration 0009). Either way a row naming no incident is
    refused, with the whole statement, and one naming a real incident is taken."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(db_url)
    try:
        incident = _registered_incident(engine)
        if what == "a notice":  # for the case it is the notice of
            with engine.begin() as conn:
                conn.execute(text(_ROWS_NAMING["a case"]), {"incident": incident})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(_ROWS_NAMING[what]), {"incident": incident + 1})
        with engine.begin() as conn:
            conn.execute(text(_ROWS_NAMING[what]), {"incident": incident})
    finally:
        engine.dispose()


def test_an_incident_that_rows_name_stays(db_url: str) -> None:
    """An incident named by its cases, notices or audit trail cannot be deleted, and a case
    cannot be moved to an incident that does not exist."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    engine = make_engine(db_url)
    try:
        incident = _registered_incident(engine)
        with engine.begin() as conn:
            conn.execute(text(_ROWS_NAMING["a case"]), {"incident": incident})
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text("DELETE FROM reinstatement_incidents"))
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text("UPDATE reinstatement_cases SET incident_id = :other"),
                         {"other": incident + 1})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM reinstatement_incidents")
                                ).scalar_one() == 1
            assert conn.execute(text("SELECT DISTINCT incident_id FROM reinstatement_cases")
                                ).scalars().all() == [incident]
    finally:
        engine.dispose()


def test_a_delete_waits_for_the_rows_being_written_for_its_incident(db_url: str) -> None:
    """The race a foreign key closes with its row lock: rows are being written for an
    incident while someone deletes it. The writing statement locks the incident, so the
    delete waits for its transaction and then finds the rows: nothing is left naming a
    deleted incident."""
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the two cannot overlap")
    engine = make_engine(db_url)
    try:
        incident = _registered_incident(engine)
        outcome: list[BaseException | None] = []
        writer = engine.connect()
        transaction = writer.begin()
        writer.execute(text(_ROWS_NAMING["a case"]), {"incident": incident})

        def delete() -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(text("SET LOCAL lock_timeout = '30s'"))
                    conn.execute(text("DELETE FROM reinstatement_incidents"))
                outcome.append(None)
            except DBAPIError as exc:
                outcome.append(exc)

        deleter = threading.Thread(target=delete)
        deleter.start()
        deleter.join(timeout=1.5)
        assert deleter.is_alive(), "the delete did not wait for the writing transaction"
        transaction.commit()
        writer.close()
        deleter.join(timeout=30)
        assert outcome and isinstance(outcome[0], DBAPIError), outcome
        assert "23503" in str(getattr(outcome[0].orig, "sqlstate", ""))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM reinstatement_cases WHERE "
                                     "incident_id = :i"), {"i": incident}).scalar_one() == 2
    finally:
        engine.dispose()

