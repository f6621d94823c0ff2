"""The planner's statistics of the tables an incident's statements read, before they run.

A platform database freshly restored or bulk-loaded has no statistics until autovacuum's
first ANALYZE; without them PostgreSQL plans a batch's verdict statement as if the tables
were nearly empty, and a 100,000-account incident took 326 s instead of 16 (measured:
`python -m bench.pipeline_bench --no-statistics`). The pipeline's role owns no table, so
it asks the owner's function `reinstatement_refresh_statistics`
(sql/functions/reinstatement_refresh_statistics.sql) to ANALYZE the tables whose statistics
are missing or stale: before planning (the platform's tables) and after it (the cases it
wrote). A platform table that still has none (its owner is not the functions' owner) stops
the run before it starts, in one line naming the ANALYZE its owner must run. SQLite plans
well enough without statistics: nothing to do there.
"""

from __future__ import annotations

from sqlalchemy import Engine

from reinstatement.errors import BadInput
from reinstatement.store import queries, store_for

PLATFORM_TABLES = ("accounts", "enforcement_actions", "pins", "rule_versions")


def refresh(engine: Engine) -> list[str]:
    """ANALYZE what needs it; the tables analyzed. BadInput when a platform table has no
    statistics and may not be analyzed here."""
    if not store_for(engine).planner_statistics:
        return []
    with engine.begin() as conn:
        rows = conn.execute(queries.statement(conn, "refresh_statistics")).all()
    missing = [row.table_name for row in rows
               if row.table_name in PLATFORM_TABLES and not row.has_statistics]
    if missing:
        tables = ", ".join(missing)
        raise BadInput(
            f"the platform's tables {tables} have no planner statistics (never analyzed) and "
            f"the pipeline may not ANALYZE them; without them an incident runs about 20 "
            f"times slower: have their owner run `ANALYZE {tables};`, then run again")
    return [row.table_name for row in rows if row.analyzed]
