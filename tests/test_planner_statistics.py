"""Planner statistics: a platform restored or bulk-loaded without them is analyzed before a
run (through the owner's function), or the run is refused in one line when it may not be.

Without statistics a 100,000-account incident took 326 s instead of 16 (the benchmark's
`--no-statistics` shows the side-by-side figures); here the point is that the statistics
are there before the statements run, and that a table the functions' owner may not
analyze stops the run before anything changes. And the statistics a run makes of its own
cases after planning do not turn a batch's claim into a scan of every case settled before.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

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


def _claim_plan(engine: Engine, incident_id: int, states: list[str]) -> tuple[str, list[int]]:
    """The database's plan of the claim statement `claim_cases` sends, and what it claimed
    (rolled back)."""
    from sqlalchemy import event

    from reinstatement.claims import claim_cases

    sent: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
             executemany: bool) -> None:
        sent.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", keep)
        transaction = conn.begin()
        claimed = [c.id for c in claim_cases(conn, incident_id, states, 100)]
        transaction.rollback()
        event.remove(conn, "before_cursor_execute", keep)
        statement, parameters = next((s, p) for s, p in sent if "reinstatement_cases" in s)
        prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    return "\n".join(str(row[-1]) for row in rows), claimed


def test_a_claim_reads_the_incident_state_index_when_statistics_say_every_case_waits(
    engine: Engine,
) -> None:
    """A run's statistics of its cases are made after planning, when every case waits, and
    batches then settle the cases in id order: read by the id index, each claim passed every
    case settled before it (at 1,000,000 accounts 0.5 to 1.2 s a batch, 64 s in all). The
    claim reads the (incident, state, id) index whatever the statistics say."""
    from reinstatement.models import Case
    from reinstatement.states import CaseState
    from tests.factories import planned_seeded_incident

    incident, cases = planned_seeded_incident(engine, accounts=6000)
    assert len(cases) > 2000
    planner_statistics.refresh(engine)  # as a run does after planning: every case planned
    ids = sorted(c.id for c in cases)
    settled_below = ids[len(ids) * 2 // 3]
    with engine.begin() as conn:  # the first two thirds settled, as batches leave them
        conn.execute(Case.__table__.update().where(
            Case.incident_id == incident.id, Case.id < settled_below).values(
            state=CaseState.CLOSED))
    plan, claimed = _claim_plan(engine, incident.id, [CaseState.PLANNED])
    assert "ix_reinstatement_cases_incident_state" in plan, plan
    assert claimed == [i for i in ids if i >= settled_below][:100]
