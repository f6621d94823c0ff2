"""Alembic environment for the pipeline's own tables.

Only tables named `reinstatement_*` are ours: autogenerate and upgrades never look at,
create, alter or drop the platform's tables that live in the same database. The version
table is ours too, hence its prefix.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from reinstatement.models import pipeline_metadata
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import include_object

VERSION_TABLE = "reinstatement_alembic_version"
config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=pipeline_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from reinstatement.resources import resources

        url = resources().settings.database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported: run `reinstate db upgrade`")
run_migrations_online()
