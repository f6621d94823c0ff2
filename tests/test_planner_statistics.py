"""Planner statistics: a platform restored or bulk-loaded without them is analyzed before a
run (through the owner's function), or the run is refused in one line when it may not be.

Without statistics a 100,000-account incident took 326 s instead of 16 (the benchmark's
`--no-statistics` shows the side-by-side figures); here the point is that the statistics
are there before the statements run, and that a table the functions' owner may not
analyze stops the run before anything changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, text

from reinstatement import planner_statistics
from reinstatement.errors import BadInput
from reinstatement.models import Incident
from reinstatement.seed import SeedOptions, seed
from tests.factories import snapshot

PLATFORM = planner_statistics.PLATFORM_TABLES


def _analyzed(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return {name: bool(analyzed) for name, analyzed in conn.execute(text(
            "SELECT relname, last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
            "FROM pg_stat_all_tables WHERE relname = ANY(:names)"),
            {"names": list(PLATFORM)})}


@pytest.fixture
def unanalyzed(engine: Engine, backend: str) -> Engine:
    if backend != "postgresql":
        pytest.skip("SQLite plans well enough without statistics")
    with engine.begin() as conn:
        for table in PLATFORM:
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
    seed(engine, SeedOptions(accounts=300, seed=3, analyze=False))
    assert not any(_analyzed(engine).values())
    return engine


def test_missing_statistics_are_refreshed_before_a_run(unanalyzed: Engine) -> None:
    analyzed = planner_statistics.refresh(unanalyzed)
    assert set(PLATFORM) <= set(analyzed)
    assert all(_analyzed(unanalyzed).values())
    assert planner_statistics.refresh(unanalyzed) == []  # fresh now: nothing more to do


@pytest.fixture
def foreign_owner(unanalyzed: Engine) -> Iterator[Engine]:
    """The owner's function run by a role that owns none of the platform's tables."""
    role = f"stats_owner_{uuid.uuid4().hex[:8]}"
    with unanalyzed.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}"'))
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'ALTER FUNCTION reinstatement_refresh_statistics() OWNER TO "{role}"'))
    yield unanalyzed
    with unanalyzed.begin() as conn:
        conn.execute(text('ALTER FUNCTION reinstatement_refresh_statistics() OWNER TO '
                          'CURRENT_USER'))
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


@pytest.mark.prefect
def test_a_run_is_refused_in_one_line_when_the_statistics_cannot_be_made(
    prefect_api: str, foreign_owner: Engine, cli_env: dict[str, str]
) -> None:
    from reinstatement.seed import INCIDENT_FAULTY
    from tests.test_cli import describe, invoke

    with pytest.raises(BadInput, match="have their owner run `ANALYZE accounts"):
        planner_statistics.refresh(foreign_owner)
    before = snapshot(foreign_owner)
    result = invoke("run", "INC-S", *[a for v in INCIDENT_FAULTY for a in ("--faulty", v)],
                    "--dry-run")
    assert result.exit_code == 2, describe(result)
    assert "have no planner statistics" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, describe(result)
    assert snapshot(foreign_owner) == before
    with foreign_owner.connect() as conn:
        assert conn.execute(select(Incident.id)).first() is None  # nothing registered
