"""Where plan, verify and restore spend their time, piece by piece, on PostgreSQL.

One thread, no Prefect: seeds N accounts into the database `reinstate_step_timing`
(dropped first, and again at the end), then plans, verifies and restores the seeded
incident batch by batch with the steps' functions wrapped in timers, and prints the
seconds spent in each, and the CPU seconds this process (not the database) spent in each step.

    .venv/bin/python -m bench.step_timing --accounts 100000
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import Counter
from typing import Any

from bench.pipeline_bench import DEFAULT_PG_URL, drop_database, recreate_database
from reinstatement import runner, steps, verdict_sql
from reinstatement import seed as seeding
from reinstatement.db import make_engine
from reinstatement.incidents import build_request
from reinstatement.schema_admin import create_platform, upgrade_pipeline

TIMED = {steps: ["claim_cases", "_verify_in_the_database", "_verify_in_python",
                 "_judge_for_restore", "_restore_on_postgresql", "_record_changed",
                 "_plan_in_the_database", "lock_platform_rows", "_audit"],
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
    parser.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    engine = make_engine(recreate_database(args.pg_url, NAME))
    try:
        create_platform(engine)
        upgrade_pipeline(engine)
        seeding.seed(engine, seeding.SeedOptions(accounts=args.accounts))
        times: Counter[str] = Counter()
        for module, names in TIMED.items():
            for name in names:
                _timed(times, module, name)
        request = build_request(
            incident_key=seeding.INCIDENT_KEY, faulty_versions=list(seeding.INCIDENT_FAULTY),
            since=seeding.INCIDENT_SINCE, until=seeding.INCIDENT_UNTIL,
            batch_size=args.batch_size, require_approval=False)
        incident = runner.register(engine, request, "step-timing")
        ctx = runner.StepContext(engine, incident, args.batch_size)
        started, cpu = time.perf_counter(), time.process_time()
        created = runner.plan_all(ctx)
        times["PLAN (step)"] = time.perf_counter() - started
        times["PLAN (this process' CPU)"] = time.process_time() - cpu
        runner.after_planning(engine, incident, created, "step-timing")
        runner.begin_real_run(engine, incident, "step-timing")
        started, cpu = time.perf_counter(), time.process_time()
        while runner.verify_one_batch(ctx, False).cases:
            pass
        times["VERIFY (step)"] = time.perf_counter() - started
        times["VERIFY (this process' CPU)"] = time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        while runner.restore_one_batch(ctx).cases:
            pass
        times["RESTORE (step)"] = time.perf_counter() - started
        times["RESTORE (this process' CPU)"] = time.process_time() - cpu
    finally:
        engine.dispose()
        drop_database(args.pg_url, NAME)
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        sys.stdout.write(f"{name:28s} {seconds:7.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
