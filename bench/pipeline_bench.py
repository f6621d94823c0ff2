"""Scale benchmark: the seeded incident through Prefect on PostgreSQL, against a raw-SQL floor.

    python -m bench.pipeline_bench --accounts 100000 [--batch-size 5000] [--skip-floor]
        [--skip-notify] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

What one run does, for N accounts (the seed's mix of outcomes, ~5 pins each):

1. Seeds a fresh database `reinstate_bench_<N>` (COPY) and makes two copies of it
   with CREATE DATABASE ... TEMPLATE: `_notify` and `_floor`.
2. Starts a Prefect server (`prefect server start`, SQLite, PREFECT_HOME in a temporary
   folder, a free port) and Postfix's `smtp-sink` on a free port, each a process of its
   own.
3. Run A, "without notices": `python -m bench.run_flow` (a child process) runs the flow
   with notify off on the seeded database: plan, verify and restore. Their wall times
   come from the pipeline's own reinstatement_runs.step_seconds; the peak RSS is the
   child's ru_maxrss (os.wait4); task runs are counted by Prefect's API for that flow run.
4. Run B, notices: the same flow with notify on, on the `_notify` copy, sending over SMTP
   to smtp-sink; notices/s is the notices sent divided by the notify step's wall time.
5. The floor: on the `_floor` copy, the account ids run A restored are loaded into a
   temporary table (not timed), then sql/raw_floor_restore.sql's write statements run in
   one transaction (timed, commit included). Ratio = run A's plan-to-restore wall time /
   floor. Run A and the floor each start after a CHECKPOINT (`wal_mark`), and the WAL each
   wrote is printed.
   The floor's row counts are checked against run A's (accounts, pins).

smtp-sink comes with Postfix: `DEBIAN_FRONTEND=noninteractive apt-get install -y postfix`
(the package's own daemon need not run; smtp-sink listens on its own port). Without it
the benchmark stops and says so, unless --skip-notify. py-spy (dev extra) profiles run A
with --profile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bench.machine import cpu_mark, other_work_since, wait_for_backends
from reinstatement.store.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent
FLOOR_SQL = ROOT / "sql" / "raw_floor_restore.sql"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FLOOR_ACTOR = "raw-sql-floor"
FLOOR_WRITES = ("activate-accounts", "write-unbans", "reverse-bans", "restore-pins")


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- the floor's SQL ----------------------------------------------------------------------

def floor_statements(path: Path = FLOOR_SQL) -> dict[str, str]:
    """The named blocks of an aiosql-style file (`-- name: x`), comments left in."""
    blocks: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"--\s*name:\s*([\w-]+)", line)
        if match:
            if name is not None:
                blocks[name] = "\n".join(lines).strip().rstrip(";")
            name, lines = match.group(1), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        blocks[name] = "\n".join(lines).strip().rstrip(";")
    return blocks


@dataclass
class FloorResult:
    load_seconds: float
    write_seconds: float
    step_seconds: dict[str, float]
    rowcounts: dict[str, int]
    wal: WalUse | None = None


@dataclass
class WalMark:
    """Where PostgreSQL's write-ahead log stood, and how many checkpoints it had made."""

    lsn: str
    checkpoints: int


@dataclass
class WalUse:
    megabytes: float
    checkpoints: int  # checkpoints that started while the phase ran

    def __str__(self) -> str:
        return f"{self.megabytes:,.0f} MB of WAL, {self.checkpoints} checkpoint(s) during it"


_WAL_SQL = ("SELECT pg_current_wal_lsn()::text, checkpoints_timed + checkpoints_req "
            "FROM pg_stat_bgwriter")


def wal_mark(conn: psycopg.Connection[Any], checkpoint: bool = True) -> WalMark:
    """Start a measured phase: a CHECKPOINT first, so that each phase (run A, the floor)
    starts from the same state of the log. Without one, the seed's and the copies' log
    (about 500 MB at 100k accounts) sets off a checkpoint in the middle of run A, and
    each page run A then touches first is written whole into the log again, which the
    floor, measured later, did not pay.

    Before it, every file the machine has yet to write is written (`os.sync`): the file
    backend's run writes 46,462 files at 100k just before the floor, and the floor that
    followed it paid for their writeback (9.19 s against about 5)."""
    os.sync()
    if checkpoint:
        allowed = conn.execute(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_checkpoint', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user").fetchone()
        if allowed and allowed[0]:
            conn.execute("CHECKPOINT")
        else:  # measured as it is
            log("no CHECKPOINT before the phase: the role may not make one")
    lsn, checkpoints = conn.execute(_WAL_SQL).fetchone() or ("0/0", 0)
    return WalMark(lsn, int(checkpoints))


def wal_since(conn: psycopg.Connection[Any], mark: WalMark) -> WalUse:
    lsn, checkpoints = conn.execute(_WAL_SQL).fetchone() or (mark.lsn, mark.checkpoints)
    row = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (lsn, mark.lsn)
                       ).fetchone()
    return WalUse(round(float(row[0] if row else 0) / 2**20, 1),
                  int(checkpoints) - mark.checkpoints)


def run_floor(engine: Engine, account_ids: list[int], reason: str,
              now: datetime | None = None) -> FloorResult:
    """Reinstate `account_ids` with the floor's statements, in one transaction, after a
    CHECKPOINT (`wal_mark`)."""
    statements = floor_statements()
    now = now or datetime.now(UTC)
    params = {"now": now, "actor": FLOOR_ACTOR, "reason": reason}
    step_seconds: dict[str, float] = {}
    rowcounts: dict[str, int] = {}
    with engine.connect() as conn:
        started = time.perf_counter()
        conn.execute(text(statements["create-reinstated-set"]))
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy("COPY floor_reinstated (account_id) FROM STDIN") as copy:
            for account_id in account_ids:
                copy.write_row((account_id,))
        conn.execute(text(statements["analyze-reinstated-set"]))
        load_seconds = time.perf_counter() - started
        driver = conn.connection.driver_connection
        mark = wal_mark(driver)  # type: ignore[arg-type]
        started = time.perf_counter()
        for name in FLOOR_WRITES:
            step_started = time.perf_counter()
            rowcounts[name] = conn.execute(text(statements[name]), params).rowcount
            step_seconds[name] = time.perf_counter() - step_started
        commit_started = time.perf_counter()
        conn.commit()
        step_seconds["commit"] = time.perf_counter() - commit_started
        write_seconds = time.perf_counter() - started
        wal = wal_since(driver, mark)  # type: ignore[arg-type]
    return FloorResult(load_seconds, write_seconds, step_seconds, rowcounts, wal)


# -- databases ----------------------------------------------------------------------------

def _conninfo(url: str, database: str) -> str:
    return (make_url(url).set(database=database).set(drivername="postgresql")
            .render_as_string(hide_password=False))


def _db_url(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(_conninfo(url, make_url(url).database or "postgres"),
                           autocommit=True)


def recreate_database(url: str, name: str, template: str | None = None) -> str:
    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _db_url(url, name)


def seeded_database(pg_url: str, name: str, accounts: int, seed_number: int,
                    statistics: bool = True, shape: str = "standard") -> tuple[str, Any]:
    """A new database `name` with the platform's and the pipeline's tables and the seeded
    incident on `accounts` accounts; its URL and the seed's summary. `statistics=False`:
    the platform's tables are left never analyzed, as after a restore or a bulk load, and
    autovacuum is kept off them so that it stays so during the runs."""
    from reinstatement.seed import SeedOptions, seed
    from reinstatement.store.schema import create_platform, upgrade_pipeline

    url = recreate_database(pg_url, name)
    engine = make_engine(url)
    try:
        create_platform(engine)
        upgrade_pipeline(engine)
        if not statistics:
            with engine.begin() as conn:
                for table in ("accounts", "enforcement_actions", "pins", "rule_versions"):
                    conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
        log(f"seeding {accounts:,} accounts ({shape} shape) into {name}"
            + ("" if statistics else ", leaving the platform's tables without statistics"))
        return url, seed(engine, SeedOptions(accounts=accounts, seed=seed_number,
                                             analyze=statistics, shape=shape))
    finally:
        engine.dispose()


def drop_database(url: str, name: str) -> None:
    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- servers in their own processes -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


SMTP_SINK_HINT = ("smtp-sink (Postfix) is not installed: run `sudo DEBIAN_FRONTEND="
                  "noninteractive apt-get install -y postfix` (the postfix daemon itself need "
                  "not run), or pass --skip-notify")


def smtp_sink_path() -> str | None:
    return shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
         if os.access(p, os.X_OK)), None)


@contextmanager
def smtp_sink(binary: str) -> Iterator[int]:
    """Postfix's smtp-sink on a free port: accepts and discards every message."""
    port = free_port()
    command = [binary]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # it refuses to keep root privileges
    command += [f"127.0.0.1:{port}", "1000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {process.stderr.read().decode()[:500]}"
                               if process.stderr else "smtp-sink exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    log(f"smtp-sink listening on 127.0.0.1:{port} (pid {process.pid})")
    try:
        yield port
    finally:
        _stop(process)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME; yields the API URL."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log_file = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 180:
                raise RuntimeError("prefect server did not answer /api/health in 180 s")
            time.sleep(0.5)
        log(f"prefect server at {api} (pid {process.pid}) after "
            f"{time.monotonic() - started:.1f} s")
        yield api
    finally:
        _stop(process)
        log_file.close()


def count_task_runs(api: str, flow_run_id: str, settle_seconds: float = 3.0) -> int:
    """Task runs Prefect recorded for the flow run, once the count stops growing.

    Task runs reach the server as events and are written a little after the flow ends.
    """
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        count = int(httpx.post(f"{api}/task_runs/count", json=body, timeout=30).json())
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since >= settle_seconds:
            break
        time.sleep(0.5)
    return last


# -- one flow run in a child process ------------------------------------------------------

@dataclass
class FlowRun:
    wall_seconds: float
    peak_rss_mb: float
    step_seconds: dict[str, float]
    flow_run_id: str
    report: dict[str, Any]
    cpu_seconds: float = 0.0
    task_runs: int = 0
    # Per step, the longest the committed work stood still (`longest_still`).
    still_seconds: dict[str, float] = field(default_factory=dict)


def longest_still(step_seconds: dict[str, float],
                  ends: dict[str, list[datetime]]) -> dict[str, float]:
    """Per step with batches, the longest time its committed work did not move: between
    the step's start (its last batch's end less the step's time) and its first batch's end,
    or between two batch ends. A progress card reads the committed work (at least every 4
    s, and at each batch's end), so in a step whose batches commit whole (verify, settle,
    restore) this is the longest its card can stand still; notify's card moves notice by
    notice within a batch as well."""
    found = {}
    for step, finished in ends.items():
        if step not in step_seconds or not finished:
            continue
        finished = sorted(finished)
        started = finished[-1].timestamp() - step_seconds[step]
        marks = [started, *(end.timestamp() for end in finished)]
        found[step] = round(max(b - a for a, b in zip(marks, marks[1:], strict=False)), 2)
    return found


def run_flow_child(env: dict[str, str], batch_size: int, notify: bool, db_url: str,
                   profile: Path | None = None, shape: str = "standard") -> FlowRun:
    command = [sys.executable, "-m", "bench.run_flow", "--batch-size", str(batch_size),
               "--shape", shape]
    if notify:
        command.append("--notify")
    if profile is not None:
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses",
                   "--format", "speedscope", "-o", str(profile), "--", *command]
    out = tempfile.TemporaryFile()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out)
    # wait4 gives this child's own rusage: its peak RSS, not the servers' or ours.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out.seek(0)
    lines = out.read().decode().strip().splitlines()
    if process.returncode != 0:
        raise RuntimeError(f"flow run failed (exit {process.returncode})")
    # The report is the last JSON line (py-spy, under --profile, prints its own lines).
    report = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT id, flow_run_id, step_seconds FROM reinstatement_runs ORDER BY id "
                "DESC LIMIT 1")).one()
            ends: dict[str, list[datetime]] = {}
            for step, finished in conn.execute(text(
                    "SELECT step, finished_at FROM reinstatement_batches WHERE run_id = :run"),
                    {"run": row.id}):
                ends.setdefault(step, []).append(finished)
    finally:
        engine.dispose()
    steps = dict(row.step_seconds or {})
    return FlowRun(wall_seconds=wall, peak_rss_mb=usage.ru_maxrss / 1024,
                   step_seconds=steps, flow_run_id=row.flow_run_id,
                   report=report, cpu_seconds=usage.ru_utime + usage.ru_stime,
                   still_seconds=longest_still(steps, ends))


# -- the benchmark ------------------------------------------------------------------------

@dataclass
class BenchResult:
    accounts: int
    batch_size: int
    command: str
    shape: str = "standard"
    seed_seconds: float = 0.0
    pins_seeded: int = 0
    cases: int = 0
    reinstated: int = 0
    pins_restored: int = 0
    plan_seconds: float = 0.0
    verify_seconds: float = 0.0
    settle_seconds: float = 0.0  # verify and restore in one pass, beside planning
    restore_seconds: float = 0.0
    pipeline_seconds: float = 0.0  # from the start of planning to the end of the restore
    cases_per_second: float = 0.0
    pins_per_second: float = 0.0
    peak_rss_mb: float = 0.0
    task_runs: int = 0
    notify_seconds: float | None = None
    notices_sent: int | None = None
    notices_per_second: float | None = None
    notify_peak_rss_mb: float | None = None
    notify_task_runs: int | None = None
    file_notify_seconds: float | None = None
    file_notices_sent: int | None = None
    file_notices_per_second: float | None = None
    sender_processes: bool = True
    floor_seconds: float | None = None
    floor_load_seconds: float | None = None
    floor_steps: dict[str, float] = field(default_factory=dict)
    floor_matches: bool | None = None
    ratio: float | None = None
    # The rows each side wrote: the floor's platform rows; run A's own rows beside the
    # platform's (case writes: one per case transition, as audited; audit rows; notices).
    floor_rows: int | None = None
    own_rows: dict[str, int] = field(default_factory=dict)
    # CPU seconds of the flow's process tree (the flow process and its sender processes):
    # run A's, and run B's and C's beyond run A's, i.e. what their notify step cost.
    run_a_cpu_seconds: float | None = None
    # What run A and the floor wrote to PostgreSQL's log, and the checkpoints during each.
    run_a_wal: WalUse | None = None
    floor_wal: WalUse | None = None
    notify_cpu_seconds: float | None = None
    file_notify_cpu_seconds: float | None = None
    # The CPU the machine's other work took beside run A and beside the floor, in cores
    # (`bench/machine.py`): a busy machine takes more from the pipeline than from the floor.
    run_a_other_cores: float | None = None
    floor_other_cores: float | None = None
    # The same beside run B (notices into smtp-sink) and run C (into files).
    notify_other_cores: float | None = None
    file_notify_other_cores: float | None = None
    # PostgreSQL's CPU seconds over run A and over the floor (`bench/machine.py`).
    run_a_database_cpu: float | None = None
    floor_database_cpu: float | None = None
    # Per step, the longest its committed work (what its progress card reads) stood still:
    # run A's steps and run B's notify.
    still_seconds: dict[str, float] = field(default_factory=dict)

    def markdown_row(self) -> str:
        def num(value: float | None, fmt: str) -> str:
            return "n/a" if value is None else format(value, fmt)

        return (f"| {self.accounts:,} | {self.seed_seconds:.1f} | {self.plan_seconds:.1f} | "
                f"{self.verify_seconds:.1f} | {self.settle_seconds:.1f} | "
                f"{self.restore_seconds:.1f} | {self.pipeline_seconds:.1f} | "
                f"{num(self.notify_seconds, '.1f')} | {self.cases_per_second:,.0f} | "
                f"{self.pins_per_second:,.0f} | {num(self.notices_per_second, ',.0f')} | "
                f"{num(self.file_notices_per_second, ',.0f')} | "
                f"{max(self.peak_rss_mb, self.notify_peak_rss_mb or 0):.0f} | "
                f"{self.task_runs} / {num(self.notify_task_runs, 'd') if self.notify_task_runs is not None else 'n/a'} | "  # noqa: E501
                f"{num(self.floor_seconds, '.2f')} | {num(self.ratio, '.2f')}x |")


MARKDOWN_HEADER = (
    "| accounts | seed s | plan s | verify s | settle s | restore s | plan to restore s | "
    "notify s | cases/s | pins/s | notices/s (SMTP) | notices/s (files) | peak RSS MB | "
    "task runs (A / B) | floor s | ratio |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def bench(args: argparse.Namespace) -> BenchResult:

    result = BenchResult(accounts=args.accounts, batch_size=args.batch_size, shape=args.shape,
                         command="python -m bench.pipeline_bench " + " ".join(sys.argv[1:]))
    sink = None if args.skip_notify else smtp_sink_path()
    if not args.skip_notify and sink is None:
        raise SystemExit(SMTP_SINK_HINT)

    base = f"reinstate_bench_{args.accounts}"
    base += "" if args.shape == "standard" else f"_{args.shape}"
    names = {"pipeline": base, "notify": f"{base}_notify", "floor": f"{base}_floor",
             "files": f"{base}_files"}
    url, summary = seeded_database(args.pg_url, base, args.accounts, args.seed,
                                   statistics=not args.no_statistics, shape=args.shape)
    urls = {"pipeline": url}
    result.seed_seconds, result.pins_seeded = summary.seconds, summary.pins
    log(f"seeded in {summary.seconds:.1f} s: {summary.pins:,} pins, expected "
        f"{dict(summary.expected_outcomes)}")
    copies = [] if args.skip_floor else ["floor"]
    copies += [] if args.skip_notify else ["notify", "files"]
    for copy in copies:
        started = time.perf_counter()
        urls[copy] = recreate_database(args.pg_url, names[copy], template=base)
        log(f"copied {base} to {names[copy]} in {time.perf_counter() - started:.1f} s")

    with tempfile.TemporaryDirectory(prefix="reinstate-bench-") as tmp:
        home = Path(tmp)
        with prefect_server(home) as api:
            env = dict(os.environ, PREFECT_API_URL=api, PREFECT_HOME=str(home),
                       PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       REINSTATE_DATABASE_URL=urls["pipeline"], REINSTATE_EMAIL_BACKEND="smtp",
                       REINSTATE_NOTIFY_RATE_PER_SECOND="0",
                       REINSTATE_SENDER_PROCESSES="false" if args.threads else "true",
                       PYTHONPATH=str(ROOT))
            result.sender_processes = not args.threads
            log(f"run A: plan, verify, restore without notices (batch {args.batch_size})")
            with _admin(args.pg_url) as admin:
                mark = wal_mark(admin)
                cpu = cpu_mark()
                run_a = run_flow_child(env, args.batch_size, notify=False,
                                       db_url=urls["pipeline"], profile=args.profile,
                                       shape=args.shape)
                wait_for_backends(names["pipeline"])  # their CPU counted as PostgreSQL's
                others = other_work_since(cpu)
                result.run_a_wal = wal_since(admin, mark)
            if others is not None:
                result.run_a_other_cores = round(others.cores, 2)
                result.run_a_database_cpu = round(others.database_cpu_seconds, 2)
            run_a.task_runs = count_task_runs(api, run_a.flow_run_id)
            steps = run_a.step_seconds
            result.plan_seconds = steps.get("plan", 0.0)
            result.verify_seconds = steps.get("verify", 0.0)
            result.settle_seconds = steps.get("settle", 0.0)
            result.restore_seconds = steps.get("restore", 0.0)
            # Planning overlaps verifying and restoring: the run's own wall time from the
            # start of planning to the end of restoring, not the sum of the steps.
            result.pipeline_seconds = steps.get("plan_to_restore") or (
                result.plan_seconds + result.verify_seconds + result.settle_seconds
                + result.restore_seconds)
            outcomes = run_a.report["outcomes"]
            result.cases = sum(outcomes.values())
            result.reinstated = outcomes.get("reinstated", 0)
            result.pins_restored = run_a.report["pins_restored"]
            result.cases_per_second = result.cases / result.pipeline_seconds
            result.pins_per_second = result.pins_restored / max(
                result.settle_seconds + result.restore_seconds, 1e-9)
            result.peak_rss_mb, result.task_runs = run_a.peak_rss_mb, run_a.task_runs
            result.run_a_cpu_seconds = run_a.cpu_seconds
            result.still_seconds = dict(run_a.still_seconds)
            log(f"run A: {steps} wall {run_a.wall_seconds:.1f} s, peak RSS "
                f"{run_a.peak_rss_mb:.0f} MB, {run_a.cpu_seconds:.1f} CPU s, {run_a.task_runs} "
                f"task runs, {result.run_a_wal}, outcomes {outcomes}"
                + (f"; PostgreSQL {others.database_cpu_seconds:.1f} CPU s; {others}"
                   if others is not None else ""))
            if dict(summary.expected_outcomes) != {k: v for k, v in outcomes.items() if v}:
                log("WARNING: outcomes differ from the seed's expectation")

            if not args.skip_notify:
                assert sink is not None
                with smtp_sink(sink) as port:
                    env_b = dict(env, REINSTATE_DATABASE_URL=urls["notify"],
                                 REINSTATE_SMTP_HOST="127.0.0.1", REINSTATE_SMTP_PORT=str(port))
                    log("run B: the same flow with notices, into smtp-sink")
                    profile_b = (None if args.profile is None else args.profile.with_name(
                        f"{args.profile.stem}-notify{args.profile.suffix}"))
                    cpu = cpu_mark()
                    run_b = run_flow_child(env_b, args.batch_size, notify=True,
                                           db_url=urls["notify"], profile=profile_b,
                                           shape=args.shape)
                    others_b = other_work_since(cpu)
                if others_b is not None:
                    result.notify_other_cores = round(others_b.cores, 2)
                run_b.task_runs = count_task_runs(api, run_b.flow_run_id)
                notices = run_b.report.get("notices", {})
                result.notify_seconds = run_b.step_seconds.get("notify")
                result.notices_sent = int(notices.get("sent", 0))
                if result.notify_seconds:
                    result.notices_per_second = result.notices_sent / result.notify_seconds
                result.notify_peak_rss_mb = run_b.peak_rss_mb
                result.notify_cpu_seconds = run_b.cpu_seconds - run_a.cpu_seconds
                result.notify_task_runs = run_b.task_runs
                if "notify" in run_b.still_seconds:
                    result.still_seconds["notify"] = run_b.still_seconds["notify"]
                log(f"run B: {run_b.step_seconds} notices {notices}, peak RSS "
                    f"{run_b.peak_rss_mb:.0f} MB, {run_b.cpu_seconds:.1f} CPU s, "
                    f"{run_b.task_runs} task runs" + (f"; {others_b}" if others_b else ""))

                outbox = home / "outbox"
                env_c = dict(env, REINSTATE_DATABASE_URL=urls["files"],
                             REINSTATE_EMAIL_BACKEND="file", REINSTATE_EMAIL_DIR=str(outbox))
                log(f"run C: the same flow with notices, into the file backend ({outbox})")
                cpu = cpu_mark()
                run_c = run_flow_child(env_c, args.batch_size, notify=True,
                                       db_url=urls["files"], shape=args.shape)
                others_c = other_work_since(cpu)
                if others_c is not None:
                    result.file_notify_other_cores = round(others_c.cores, 2)
                notices = run_c.report.get("notices", {})
                result.file_notify_seconds = run_c.step_seconds.get("notify")
                result.file_notices_sent = int(notices.get("sent", 0))
                if result.file_notify_seconds:
                    result.file_notices_per_second = (result.file_notices_sent
                                                      / result.file_notify_seconds)
                result.file_notify_cpu_seconds = run_c.cpu_seconds - run_a.cpu_seconds
                written = sum(1 for _ in outbox.glob("*.eml"))
                log(f"run C: {run_c.step_seconds} notices {notices}, {written:,} files, "
                    f"peak RSS {run_c.peak_rss_mb:.0f} MB, {run_c.cpu_seconds:.1f} CPU s"
                    + (f"; {others_c}" if others_c else ""))
                if written != result.file_notices_sent:
                    log("WARNING: the outbox folder does not hold one file per notice sent")
                result.notify_peak_rss_mb = max(result.notify_peak_rss_mb or 0,
                                                run_c.peak_rss_mb)

    if not args.skip_floor:
        result.floor_matches = measure_floor(args, urls, result)
    for copy in ([] if args.keep else copies + ["pipeline"]):
        drop_database(args.pg_url, names[copy])
    return result


def measure_floor(args: argparse.Namespace, urls: dict[str, str], result: BenchResult) -> bool:
    """Time the floor's writes for the accounts run A restored; check its row counts."""
    source = make_engine(urls["pipeline"])
    try:
        with source.connect() as conn:
            account_ids = list(conn.execute(text(
                "SELECT account_id FROM reinstatement_cases WHERE outcome = 'reinstated' "
                "AND state = 'restored' ORDER BY account_id")).scalars())
            transitions = conn.execute(text(
                "SELECT count(*) FROM reinstatement_audit WHERE case_id IS NOT NULL")
            ).scalar_one()
            result.own_rows = {
                "case writes": transitions, "audit rows": transitions,
                "notices": conn.execute(text("SELECT count(*) FROM reinstatement_notices")
                                        ).scalar_one(),
            }
    finally:
        source.dispose()
    engine = make_engine(urls["floor"])
    try:
        cpu = cpu_mark()
        floor = run_floor(engine, account_ids,
                          reason="Reinstated by the raw-SQL floor of the scale benchmark")
        others = other_work_since(cpu)
    finally:
        engine.dispose()
    if others is not None:
        result.floor_other_cores = round(others.cores, 2)
        result.floor_database_cpu = round(others.database_cpu_seconds, 2)
    result.floor_seconds, result.floor_load_seconds = floor.write_seconds, floor.load_seconds
    result.floor_steps = {k: round(v, 3) for k, v in floor.step_seconds.items()}
    result.floor_wal = floor.wal
    result.ratio = result.pipeline_seconds / floor.write_seconds
    result.floor_rows = sum(floor.rowcounts.values())
    matches = (floor.rowcounts["activate-accounts"] == len(account_ids) == result.reinstated
               and floor.rowcounts["restore-pins"] == result.pins_restored)
    log(f"floor: {floor.write_seconds:.2f} s writes ({result.floor_steps}), "
        f"{floor.load_seconds:.2f} s to load {len(account_ids):,} ids; {floor.wal}; rows "
        f"{floor.rowcounts}; same counts as the pipeline: {matches}"
        + (f"; PostgreSQL {others.database_cpu_seconds:.1f} CPU s; {others}"
           if others is not None else ""))
    return matches


def _notice_cpu_why(cpu_seconds: float, sent: int) -> str:
    """Why a notice rate is what it is: the CPU each notice cost the run's processes, and
    the most two cores give at that cost before the database and the mail server take
    their share (each notice's commit and SMTP exchange run on the same cores)."""
    per_notice = cpu_seconds / sent
    cores = os.cpu_count() or 1
    return (f"  why: the notify step cost the flow's processes (the flow and its sender "
            f"processes) {per_notice * 1e3:.2f} ms of CPU a notice ({cpu_seconds:.1f} CPU s "
            f"beyond run A's, {sent:,} notices); {cores} core(s) give at most "
            f"{cores / per_notice:,.0f} such notices a second before PostgreSQL's commit of "
            "each one and the mail server take their share; `python -m bench.notify_bench` "
            "measures the send path alone")


# Other work taking this much of a core beside run A or the floor makes a missed target
# the machine's as much as the pipeline's: the benchmark says so.
BUSY_CORES = 0.25


def verdicts(result: BenchResult) -> list[str]:
    """The benchmark's targets, each said plainly as met or not."""
    lines = []
    if result.ratio is not None:
        met = "met" if result.ratio <= 2 else "NOT met"
        lines.append(f"target plan + verify + restore within 2x of the floor: {met} "
                     f"({result.pipeline_seconds:.1f} s against {result.floor_seconds:.2f} s, "
                     f"{result.ratio:.2f}x)")
        if result.ratio > 2 and result.floor_rows:
            own = sum(result.own_rows.values())
            parts = ", ".join(f"{n:,} {what}" for what, n in result.own_rows.items())
            twice = ("" if result.settle_seconds else ", and judges each reinstated account "
                     "twice (at verify, and again under the locks before restoring)")
            lines.append(
                f"  why: the floor writes {result.floor_rows:,} platform rows; the pipeline "
                f"writes those through its checked restore function and {own:,} rows of its "
                f"own beside them ({parts}){twice}; bench/RESULTS.md has the profile of a "
                "batch")
            if result.run_a_database_cpu and result.floor_database_cpu:
                times = result.run_a_database_cpu / result.floor_database_cpu
                lines.append(
                    f"  PostgreSQL alone spent {result.run_a_database_cpu:.1f} CPU s on run A "
                    f"and {result.floor_database_cpu:.1f} on the floor ({times:.1f} times as "
                    "much)" + (": the floor's work is one transaction on one core, so run A "
                               "is within 2x only while it has more than one core to itself"
                               if times > 2 else ""))
        busy = max(result.run_a_other_cores or 0.0, result.floor_other_cores or 0.0)
        if result.ratio > 2 and busy >= BUSY_CORES:
            lines.append(
                f"  and the machine was busy: its other work took "
                f"{result.run_a_other_cores or 0:.2f} of its {os.cpu_count() or 1} cores beside "
                f"run A and {result.floor_other_cores or 0:.2f} beside the floor. The floor "
                "is one transaction on one core; the pipeline's batches, flow and Prefect "
                "server need every core, so other work slows it more than the floor: "
                "measure on a quiet machine")
    for name, run, rate, cpu, sent, other in (
            ("SMTP (smtp-sink)", "B", result.notices_per_second, result.notify_cpu_seconds,
             result.notices_sent, result.notify_other_cores),
            ("the file backend", "C", result.file_notices_per_second,
             result.file_notify_cpu_seconds, result.file_notices_sent,
             result.file_notify_other_cores)):
        if rate is not None:
            met = "met" if rate >= 2000 else "NOT met"
            lines.append(f"target 2,000 notices/s into {name}: {met} ({rate:,.0f}/s, "
                         f"{'sender processes' if result.sender_processes else 'threads'})")
            if rate < 2000 and cpu and sent:
                lines.append(_notice_cpu_why(cpu, sent))
            if rate < 2000 and (other or 0.0) >= BUSY_CORES:
                lines.append(
                    f"  and the machine was busy: its other work took {other:.2f} of its "
                    f"{os.cpu_count() or 1} cores during run {run}, whose notices need "
                    "every core (the senders, PostgreSQL's commit of each notice, the mail "
                    "server): measure on a quiet machine")
    # Notify's card moves notice by notice within a batch (each notice is its own commit);
    # the other steps' cards move when a batch commits.
    whole = {step: s for step, s in result.still_seconds.items() if step != "notify"}
    if whole:
        still = max(whole.values())
        between = result.still_seconds.get("notify")
        lines.append(
            f"target progress moves at least every 5 s: {'met' if still <= 5 else 'NOT met'} "
            "(the longest a step's committed work stood still, batch end to batch end: "
            + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in whole.items())
            + ("" if between is None else
               f"; notify {between:.1f} s between batch ends, its card moving notice by "
               "notice within each") + ")")
    rss = max(result.peak_rss_mb, result.notify_peak_rss_mb or 0)
    lines.append(f"target peak RSS at most 300 MB: {'met' if rss <= 300 else 'NOT met'} "
                 f"({rss:.0f} MB)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=20250401)
    parser.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--skip-floor", action="store_true", help="no raw-SQL floor")
    parser.add_argument("--skip-notify", action="store_true", help="no run with notices")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the runs with py-spy into this speedscope file (run B: "
                        "NAME-notify.json); peak RSS is then py-spy's, not the flow's")
    parser.add_argument("--json", type=Path, default=None, help="append the result here")
    parser.add_argument("--no-statistics", action="store_true",
                        help="seed the platform without planner statistics (never analyzed, "
                        "as after a restore or a bulk load): the pipeline refreshes them")
    parser.add_argument("--shape", choices=("standard", "mixed"), default="standard",
                        help="the seeded incident's shape (reinstatement/seed/shapes.py): mixed "
                        "names a version with no correction beside the two, pads evidence "
                        "with twenty signals and gives banned accounts reversed older bans")
    parser.add_argument("--threads", action="store_true",
                        help="send notices from the flow's threads, not sender processes")
    args = parser.parse_args(argv)
    if make_url(args.pg_url).get_backend_name() != "postgresql":
        parser.error("--pg-url must be a PostgreSQL URL")
    result = bench(args)
    sys.stdout.write(MARKDOWN_HEADER + "\n" + result.markdown_row() + "\n")
    sys.stdout.write(f"command: {result.command}\n")
    for line in verdicts(result):
        sys.stdout.write(line + "\n")
    if args.json is not None:
        with args.json.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(result)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
