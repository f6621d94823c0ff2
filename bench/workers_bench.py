"""Scale-out benchmark: one incident with one process, then fanned out to two workers.

    python -m bench.workers_bench --accounts 100000 [--batch-size 5000] [--workers 2]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json out.jsonl]

What one run does, for N accounts (the seed's incident, ~5 pins each, PostgreSQL):

1. Seeds `reinstate_wbench_<N>` once and copies it (CREATE DATABASE ... TEMPLATE) for
   each configuration, so both start from the same rows.
2. Starts a Prefect server (SQLite, its own PREFECT_HOME, a free port) and Postfix's
   `smtp-sink`, registers the deployments and the global limits on a process work pool
   with `reinstate deploy` (the limits set high, 8 database batches, 8 SMTP connections,
   100,000 notices/s, so that they do not bind: what is measured is the scale-out itself).
3. "1 process": `reinstate run KEY ... --child-runs 1`, the default, in a process of its
   own: that process runs every batch (REINSTATE_WORKERS=2 threads, 2 SMTP connections).
4. "W workers": W `prefect worker start --pool ... --limit 1` processes, and
   `reinstate run ... --child-runs W`: each step (verify, restore, notify) goes to W child
   runs, one per worker, each with the same two threads and two connections.
5. Per step: the incident run's own wall time (reinstatement_runs.step_seconds, child
   runs' start-up included) and, for the workers, the longest child run's time on its
   step (its work, without the start-up). Speed-up = 1-process seconds / workers seconds.

Everything it starts it stops; the databases are dropped afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.pipeline_bench import (
    DEFAULT_PG_URL,
    ROOT,
    SMTP_SINK_HINT,
    _stop,
    drop_database,
    log,
    prefect_server,
    recreate_database,
    seeded_database,
    smtp_sink,
    smtp_sink_path,
)
from reinstatement.store.engine import make_engine

BIN = Path(sys.executable).parent
STEPS = ("plan", "verify", "restore", "notify")


def _incident_command(batch_size: int, child_runs: int) -> list[str]:
    from reinstatement import seed

    return [str(BIN / "reinstate"), "run", seed.INCIDENT_KEY,
            *[arg for name in seed.INCIDENT_FAULTY for arg in ("--faulty", name)],
            "--since", seed.INCIDENT_SINCE.isoformat(),
            "--until", seed.INCIDENT_UNTIL.isoformat(),
            "--batch-size", str(batch_size), "--child-runs", str(child_runs)]


def run_incident(env: dict[str, str], batch_size: int, child_runs: int, db_url: str,
                 log_path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with log_path.open("ab") as out:
        done = subprocess.run(_incident_command(batch_size, child_runs), env=env, cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the incident run failed (exit {done.returncode}); see {log_path}")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            parent = conn.execute(text(
                "SELECT id, step_seconds FROM reinstatement_runs WHERE parent_run_id IS NULL "
                "ORDER BY id DESC LIMIT 1")).one()
            children = conn.execute(text(
                "SELECT step, max((step_seconds->>step)::float) FROM reinstatement_runs "
                "WHERE parent_run_id = :p GROUP BY step"), {"p": parent.id}).all()
            places = conn.execute(text(
                "SELECT b.step, count(DISTINCT (b.host, b.pid)), count(*), sum(b.cases) "
                "FROM reinstatement_batches b JOIN reinstatement_runs r ON r.id = b.run_id "
                "WHERE r.id = :p OR r.parent_run_id = :p GROUP BY b.step"),
                {"p": parent.id}).all()
            outcomes = dict(conn.execute(text(
                "SELECT outcome, count(*) FROM reinstatement_cases GROUP BY outcome")).all())
            sent = conn.execute(text(
                "SELECT count(*) FROM reinstatement_notices WHERE state = 'sent'")).scalar_one()
    finally:
        engine.dispose()
    return {
        "child_runs": child_runs, "wall_seconds": round(wall, 2),
        "step_seconds": dict(parent.step_seconds or {}),
        "child_step_seconds": {step: round(float(s), 3) for step, s in children},
        "processes_per_step": {step: int(n) for step, n, _, _ in places},
        "batches_per_step": {step: int(b) for step, _, b, _ in places},
        "cases_per_step": {step: int(c) for step, _, _, c in places},
        "outcomes": outcomes, "notices_sent": int(sent),
    }


def start_workers(env: dict[str, str], pool: str, count: int, home: Path
                  ) -> list[subprocess.Popen[bytes]]:
    workers = []
    for number in range(1, count + 1):
        worker_env = dict(env, PREFECT_HOME=str(home / f"worker-{number}"),
                          PREFECT_WORKER_QUERY_SECONDS="1")
        with (home / f"worker-{number}.log").open("ab") as out:
            workers.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                 "--name", f"bench-worker-{number}", "--limit", "1"],
                env=worker_env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))
    time.sleep(5)  # each worker has polled the pool once
    return workers


def table(single: dict[str, Any], fanned: dict[str, Any], workers: int) -> str:
    lines = [f"| step | 1 process, s | {workers} workers, s (incident run) | "
             f"{workers} workers, s (slowest child's own) | speed-up | speed-up, own |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for step in STEPS:
        one = single["step_seconds"].get(step)
        many = fanned["step_seconds"].get(step)
        own = fanned["child_step_seconds"].get(step)
        if one is None or many is None:
            continue
        lines.append(f"| {step} | {one:.1f} | {many:.1f} | "
                     f"{'-' if own is None else f'{own:.1f}'} | {one / many:.2f}x | "
                     f"{'-' if not own else f'{one / own:.2f}x'} |")
    total_one = sum(single["step_seconds"].get(s, 0) for s in STEPS)
    total_many = sum(fanned["step_seconds"].get(s, 0) for s in STEPS)
    lines.append(f"| all four | {total_one:.1f} | {total_many:.1f} | | "
                 f"{total_one / total_many:.2f}x | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20250401)
    parser.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args(argv)
    sink = smtp_sink_path()
    if sink is None:
        raise SystemExit(SMTP_SINK_HINT)


    base = f"reinstate_wbench_{args.accounts}"
    copies = {"single": f"{base}_single", "workers": f"{base}_workers"}
    url, summary = seeded_database(args.pg_url, base, args.accounts, args.seed)
    urls = {what: recreate_database(args.pg_url, name, template=base)
            for what, name in copies.items()}
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="reinstate-wbench-") as tmp:
            home = Path(tmp)
            (home / "server").mkdir()
            with prefect_server(home / "server") as api, smtp_sink(sink) as port:
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith(("REINSTATE_", "PREFECT_"))}
                env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home / "client"),
                           PREFECT_SERVER_ANALYTICS_ENABLED="false",
                           PREFECT_LOGGING_LEVEL="WARNING",
                           REINSTATE_EMAIL_BACKEND="smtp", REINSTATE_SMTP_HOST="127.0.0.1",
                           REINSTATE_SMTP_PORT=str(port), REINSTATE_WORKERS="2",
                           REINSTATE_SMTP_CONNECTIONS="2", PYTHONPATH=str(ROOT))
                subprocess.run([str(BIN / "reinstate"), "deploy", "--pool", "wbench",
                                "--database-batches", "8", "--smtp-connections", "8",
                                "--mail-rate", "100000"], env=env, check=True, timeout=300)
                log("1 process: reinstate run --child-runs 1")
                results["single"] = run_incident(
                    dict(env, REINSTATE_DATABASE_URL=urls["single"]), args.batch_size, 1,
                    urls["single"], home / "single.log")
                log(f"1 process: {results['single']}")
                worker_env = dict(env, REINSTATE_DATABASE_URL=urls["workers"])
                workers = start_workers(worker_env, "wbench", args.workers, home)
                try:
                    log(f"{args.workers} workers: reinstate run --child-runs {args.workers}")
                    results["workers"] = run_incident(worker_env, args.batch_size,
                                                      args.workers, urls["workers"],
                                                      home / "workers.log")
                finally:
                    for worker in workers:
                        _stop(worker)
                log(f"{args.workers} workers: {results['workers']}")
    finally:
        if not args.keep:
            for name in (base, *copies.values()):
                drop_database(args.pg_url, name)
    same = (results["single"]["outcomes"] == results["workers"]["outcomes"]
            and results["single"]["notices_sent"] == results["workers"]["notices_sent"])
    sys.stdout.write(f"{args.accounts:,} accounts, batch {args.batch_size}, "
                     f"{summary.pins:,} pins; same outcomes and notices in both: "
                     f"{'yes' if same else 'NO'}\n")
    sys.stdout.write(table(results["single"], results["workers"], args.workers) + "\n")
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps({"accounts": args.accounts, "batch_size": args.batch_size,
                                  "workers": args.workers, **results}) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
