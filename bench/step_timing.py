"""Where plan, verify and restore spend their time, piece by piece, on PostgreSQL.

One thread, no Prefect: seeds N accounts into the database `reinstate_step_timing`
(dropped first, and again at the end), then plans, verifies and restores the seeded
incident batch by batch with the steps' functions wrapped in timers, and prints the
seconds spent in each, and the CPU seconds this process (not the database) spent in each step.
With `--settle`, verification and restore go in one pass (`settle_batch`), as a run that
needs no approval does. Each SQL statement's wall seconds and the CPU seconds its database
backend spent on it (read from /proc, so the database must run on this machine) are
printed too, grouped by the statement's first words.

    .venv/bin/python -m bench.step_timing --accounts 100000 [--settle] [--shape mixed]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from bench.pipeline_bench import DEFAULT_PG_URL, drop_database, recreate_database
from reinstatement import facts, planning, restore, runner, verify
from reinstatement import seed as seeding
from reinstatement.incident_request import build_request
from reinstatement.store import verdict_sql
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import create_platform, upgrade_pipeline

# Where a name is imported into the restore module too, it is timed there as well (a call
# from the restore reads the restore module's name).
TIMED = {verify: ["claim_cases", "verify_in_the_database", "verify_in_python",
                  "write_audit"],
         planning: ["_plan_in_the_database", "write_audit"],
         facts: ["lock_platform_rows"],
         restore: ["claim_cases", "verify_in_the_database", "verify_in_python",
                   "_judge_for_restore", "_restore_on_postgresql", "_record_changed",
                   "lock_platform_rows", "write_audit"],
         verdict_sql: ["fetch"]}
NAME = "reinstate_step_timing"


def _timed(times: Counter[str], module: Any, name: str) -> None:
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            times[name] += time.perf_counter() - started

    setattr(module, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--shape", choices=seeding.SHAPES, default="standard",
                        help="the seeded incident's shape (reinstatement/seed/shapes.py)")
    parser.add_argument("--settle", action="store_true",
                        help="verify and restore in one pass, as a run without approval")
    parser.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    engine = make_engine(recreate_database(args.pg_url, NAME))
    try:
        create_platform(engine)
        upgrade_pipeline(engine)
        seeding.seed(engine, seeding.SeedOptions(accounts=args.accounts, shape=args.shape))
        times: Counter[str] = Counter()
        statements: dict[str, list[float]] = {}
        for module, names in TIMED.items():
            for name in names:
                _timed(times, module, name)
        request = build_request(
            incident_key=seeding.INCIDENT_KEY,
            faulty_versions=list(seeding.incident_faulty(args.shape)),
            since=seeding.INCIDENT_SINCE, until=seeding.INCIDENT_UNTIL,
            batch_size=args.batch_size, require_approval=False)
        incident = runner.register(engine, request, "step-timing")
        ctx = runner.StepContext(engine, incident, args.batch_size)
        started, cpu = time.perf_counter(), time.process_time()
        runner.plan_all(ctx)
        times["PLAN (step)"] = time.perf_counter() - started
        times["PLAN (this process' CPU)"] = time.process_time() - cpu
        runner.settle_plan(engine, incident, "step-timing", dry_run=False)
        runner.begin_real_run(engine, incident, "step-timing")
        with engine.connect() as conn:  # the seed's log written out: each pass starts alike
            conn.execute(text("CHECKPOINT"))
        _time_statements(engine, statements)
        passes = ([("SETTLE", runner.settle_one_batch)] if args.settle else
                  [("VERIFY", lambda c: runner.verify_one_batch(c, False)),
                   ("RESTORE", runner.restore_one_batch)])
        for label, one_batch in passes:
            started, cpu = time.perf_counter(), time.process_time()
            while one_batch(ctx).cases:
                pass
            times[f"{label} (step)"] = time.perf_counter() - started
            times[f"{label} (this process' CPU)"] = time.process_time() - cpu
    finally:
        engine.dispose()
        drop_database(args.pg_url, NAME)
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        sys.stdout.write(f"{name:28s} {seconds:7.2f}\n")
    sys.stdout.write(f"\n{'statement':60s} {'count':>6s} {'wall s':>7s} {'db CPU s':>8s}\n")
    for name, (count, wall, db_cpu) in sorted(statements.items(), key=lambda i: -i[1][2]):
        sys.stdout.write(f"{name:60.60s} {count:6.0f} {wall:7.2f} {db_cpu:8.2f}\n")
    return 0


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user and system) this database backend has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_statements(engine: Any, statements: dict[str, list[float]]) -> None:
    """Record each statement's wall seconds and its backend's CPU seconds, by its words."""
    pids: dict[int, int] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if key not in pids:
            pids[key] = conn.connection.dbapi_connection.info.backend_pid
        conn.info["timing"] = (time.perf_counter(), _backend_cpu(pids[key]))

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        wall, cpu = conn.info.pop("timing")
        key = id(conn.connection.dbapi_connection)
        name = " ".join(re.sub(r"%\(\w+\)s|\$\d+", "?", statement).split())[:60]
        entry = statements.setdefault(name, [0.0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - wall
        entry[2] += _backend_cpu(pids[key]) - cpu


if __name__ == "__main__":
    raise SystemExit(main())
