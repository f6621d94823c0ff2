"""The benchmark's raw-SQL floor is a fair comparison: it writes what the pipeline writes.

Two copies of one small seeded incident (the same seed writes the same rows): on one the
pipeline runs (plan, verify, restore, without Prefect); on the other the floor's
statements (sql/raw_floor_restore.sql) reinstate the accounts the pipeline restored. The
platform must end up the same on both, up to what is free to differ: the moments written,
the unban actions' ids, actor and reason. PostgreSQL only, as the floor is.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from bench.pipeline_bench import run_floor
from reinstatement import runner, seed
from reinstatement.incident_request import build_request
from reinstatement.models import Case
from reinstatement.states import PIPELINE_ACTOR
from reinstatement.store.engine import make_engine
from tests.factories import snapshot

ACCOUNTS = 600


def _platform_end_state(before: dict[str, dict[int, dict[str, Any]]],
                        after: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The platform rows with what may legitimately differ between the two replaced.

    Moments that changed become "moved"; an unban is known by its account, not its id.
    """
    unban_account = {
        row_id: row["account_id"]
        for row_id, row in after["enforcement_actions"].items()
        if row_id not in before["enforcement_actions"]
    }

    def normal(table: str, row_id: int, row: dict[str, Any]) -> dict[str, Any]:
        old = before[table].get(row_id, {})
        out: dict[str, Any] = {}
        for column, value in row.items():
            if column in ("updated_at", "reversed_at", "created_at") and value != old.get(column):
                out[column] = "moved"
            elif column in ("reversed_by_action_id", "hidden_by_action_id") and (
                    value in unban_account):
                out[column] = ("unban of", unban_account[value])
            else:
                out[column] = value
        return out

    state: dict[str, Any] = {}
    for table, rows in after.items():
        state[table] = {}
        for row_id, row in rows.items():
            if table == "enforcement_actions" and row_id in unban_account:
                key: Any = ("unban of", row["account_id"])
                row = {k: v for k, v in row.items() if k not in ("id", "actor", "reason")}
            else:
                key = row_id
            state[table][key] = normal(table, row_id, row)
    return state


@pytest.fixture
def floor_engine(backend: str, templates: Any) -> Any:
    url = templates.new_database(backend)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    templates.drop(url)


def test_the_floor_leaves_the_platform_as_the_pipeline_does(
        backend: str, engine: Engine, floor_engine: Engine) -> None:
    if backend != "postgresql":
        pytest.skip("the raw-SQL floor is PostgreSQL SQL")
    options = seed.SeedOptions(accounts=ACCOUNTS, seed=7)
    seed.seed(engine, options)
    seed.seed(floor_engine, options)
    seeded = snapshot(engine)
    assert snapshot(floor_engine) == seeded

    request = build_request(
        incident_key=seed.INCIDENT_KEY, faulty_versions=list(seed.INCIDENT_FAULTY),
        since=seed.INCIDENT_SINCE, until=seed.INCIDENT_UNTIL, notify=False, batch_size=100,
        require_approval=False,
    )
    runner.run_without_prefect(engine, request, PIPELINE_ACTOR)
    with engine.connect() as conn:
        restored = list(conn.execute(
            select(Case.account_id).where(Case.outcome == "reinstated",
                                          Case.state == "restored")
            .order_by(Case.account_id)).scalars())
    assert restored, "the seed always has accounts to reinstate"

    floor = run_floor(floor_engine, restored, reason="floor")
    assert floor.rowcounts["activate-accounts"] == len(restored)
    after_floor = snapshot(floor_engine)
    assert (_platform_end_state(seeded, after_floor)
            == _platform_end_state(seeded, snapshot(engine)))

    # Safe to run again for the same accounts: nothing changes the second time.
    again = run_floor(floor_engine, restored, reason="floor")
    assert again.rowcounts["activate-accounts"] == 0
    assert snapshot(floor_engine) == after_floor


def test_the_benchmark_says_plainly_why_a_missed_ratio_is_missed() -> None:
    """A ratio above 2x is printed as NOT met, with the rows each side wrote."""
    from bench.pipeline_bench import BenchResult, verdicts

    result = BenchResult(accounts=100_000, batch_size=5000, command="bench",
                         pipeline_seconds=24.0, floor_seconds=9.85, ratio=24.0 / 9.85,
                         floor_rows=369_048,
                         own_rows={"case writes": 187_137, "audit rows": 187_137,
                                   "notices": 48_973})
    lines = verdicts(result)
    assert lines[0].startswith("target plan + verify + restore within 2x of the floor: NOT met")
    assert "369,048 platform rows" in lines[1] and "423,247 rows of its own" in lines[1]
    assert "187,137 case writes, 187,137 audit rows, 48,973 notices" in lines[1]
    met = verdicts(BenchResult(accounts=1_000_000, batch_size=5000, command="bench",
                               pipeline_seconds=248.7, floor_seconds=135.55,
                               ratio=248.7 / 135.55, floor_rows=3_687_756,
                               own_rows={"case writes": 1}))
    assert met[0].split(":")[1].startswith(" met") and "why" not in met[1]


def test_the_benchmark_says_what_a_missed_notice_rate_cost_in_cpu() -> None:
    """A notice rate under 2,000/s comes with the CPU a notice cost and what the machine's
    cores allow at that cost; a met rate with none."""
    import os

    from bench.pipeline_bench import BenchResult, verdicts

    result = BenchResult(accounts=100_000, batch_size=5000, command="bench",
                         notices_per_second=1_159.0, notices_sent=46_462,
                         notify_cpu_seconds=49.9, file_notices_per_second=2_100.0,
                         file_notices_sent=46_462, file_notify_cpu_seconds=30.0)
    lines = verdicts(result)
    smtp = lines.index("target 2,000 notices/s into SMTP (smtp-sink): NOT met "
                       "(1,159/s, sender processes)")
    why = lines[smtp + 1]
    assert why.startswith("  why: ") and "1.07 ms of CPU a notice" in why, why
    cores = os.cpu_count() or 1
    assert f"at most {cores / (49.9 / 46_462):,.0f} such notices a second" in why, why
    files = lines.index("target 2,000 notices/s into the file backend: met "
                        "(2,100/s, sender processes)")
    assert not lines[files + 1].startswith("  why")


def test_the_benchmark_says_when_the_machine_was_busy() -> None:
    """A missed ratio beside other work says how much of the machine that work took; a
    missed ratio on a quiet machine, and a met one beside other work, do not."""
    from bench.pipeline_bench import BenchResult, verdicts

    def lines(ratio: float, run_a: float, floor: float) -> list[str]:
        return verdicts(BenchResult(
            accounts=100_000, batch_size=5000, command="bench", pipeline_seconds=ratio * 4,
            floor_seconds=4.0, ratio=ratio, floor_rows=369_048, own_rows={"audit rows": 1},
            run_a_other_cores=run_a, floor_other_cores=floor))

    busy = lines(2.37, 0.76, 1.02)
    assert busy[2].startswith("  and the machine was busy: its other work took 0.76 of its ")
    assert "and 1.02 beside the floor" in busy[2]
    assert not any("busy" in line for line in lines(2.37, 0.02, 0.0))
    assert not any("busy" in line for line in lines(1.9, 0.76, 1.02))


def test_the_benchmark_says_when_the_machine_was_busy_while_notices_went() -> None:
    """A missed notice rate beside other work says how much of the machine it took; a
    missed rate on a quiet machine, and a met one beside other work, do not."""
    from bench.pipeline_bench import BenchResult, verdicts

    def lines(smtp: float, files: float, smtp_other: float, files_other: float) -> list[str]:
        return verdicts(BenchResult(
            accounts=100_000, batch_size=5000, command="bench", notices_per_second=smtp,
            notices_sent=46_462, notify_cpu_seconds=20.0, file_notices_per_second=files,
            file_notices_sent=46_462, file_notify_cpu_seconds=20.0,
            notify_other_cores=smtp_other, file_notify_other_cores=files_other))

    busy = [line for line in lines(1_500, 1_400, 0.61, 0.05) if "busy" in line]
    assert len(busy) == 1 and busy[0].startswith(
        "  and the machine was busy: its other work took 0.61 of its "), busy
    assert "during run B" in busy[0]
    busy = [line for line in lines(2_100, 1_400, 0.61, 0.9) if "busy" in line]
    assert len(busy) == 1 and "0.90" in busy[0] and "during run C" in busy[0], busy
    assert not any("busy" in line for line in lines(1_500, 1_400, 0.1, 0.2))
    assert not any("busy" in line for line in lines(2_100, 2_200, 0.9, 0.9))


def test_the_benchmark_says_how_much_more_the_database_did_than_for_the_floor() -> None:
    """A missed ratio comes with PostgreSQL's CPU over run A against the floor's; past twice
    the floor's, it says that run A needs more than one core to be within 2x."""
    from bench.pipeline_bench import BenchResult, verdicts

    def lines(run_a: float | None, floor: float | None) -> list[str]:
        return verdicts(BenchResult(
            accounts=100_000, batch_size=5000, command="bench", pipeline_seconds=8.4,
            floor_seconds=4.0, ratio=2.1, floor_rows=369_048, own_rows={"audit rows": 1},
            run_a_database_cpu=run_a, floor_database_cpu=floor))

    more = lines(8.4, 3.36)
    assert more[2] == ("  PostgreSQL alone spent 8.4 CPU s on run A and 3.4 on the floor (2.5 "
                       "times as much): the floor's work is one transaction on one core, so "
                       "run A is within 2x only while it has more than one core to itself")
    assert lines(6.0, 3.36)[2].endswith("(1.8 times as much)")
    assert not any("PostgreSQL" in line for line in lines(None, 3.36))


def test_other_work_is_the_machines_cpu_beside_ours(tmp_path: Any) -> None:
    """The CPU of a process outside this process tree counts as other work; this tree's
    own (a child, once reaped) counts as ours."""
    import subprocess
    import sys
    import time

    from bench.machine import cpu_mark, other_work_since

    spin = ("import time, pathlib, sys\nend = time.process_time() + float(sys.argv[1])\n"
            "while time.process_time() < end: pass\npathlib.Path(sys.argv[2]).touch()")
    mark = cpu_mark()
    if mark is None:
        pytest.skip("no /proc")
    # A child of ours spends 0.6 CPU s, and is reaped: ours.
    subprocess.run([sys.executable, "-c", spin, "0.6", str(tmp_path / "child")], check=True)
    after = cpu_mark()
    assert after is not None and after.ours - mark.ours >= 0.55, (mark, after)
    # A process that left our tree (its parent ended at once) spends 0.8 CPU s: other work.
    mark, done = cpu_mark(), tmp_path / "orphan"
    subprocess.run(["sh", "-c", f'{sys.executable} -c "$0" 0.8 {done} &', spin], check=True)
    deadline = time.monotonic() + 60
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    theirs = other_work_since(mark)
    assert done.exists() and theirs is not None and theirs.cpu_seconds >= 0.7, theirs


def test_the_database_cpu_is_postgresqls(templates: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's CPU over a phase is what processes named postgres spent: a query
    that keeps a backend busy shows there once its connection ends and the backend is
    reaped (`wait_for_backends`); no other process counts."""
    import os

    import psycopg
    from sqlalchemy.engine import make_url

    from bench import machine
    from tests.conftest import require_backend

    require_backend("postgresql")
    url = make_url(templates.new_database("postgresql"))
    mark = machine.cpu_mark()
    if mark is None:
        pytest.skip("no /proc")
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                         password=url.password, autocommit=True) as conn:
        backend = conn.info.backend_pid
        conn.execute("SELECT count(*) FROM generate_series(1, 4000000) AS g(n) "
                     "WHERE md5(g.n::text) LIKE 'a%'").fetchone()
    assert machine.wait_for_backends(url.database)
    assert not os.path.exists(f"/proc/{backend}")  # reaped: its CPU is its postmaster's
    spent = machine.other_work_since(mark)
    assert spent is not None and spent.database_cpu_seconds >= 0.5, spent
    templates.drop(url.render_as_string(hide_password=False))

    # Which processes count, on a made-up machine (other tests use PostgreSQL meanwhile).
    cpu = {"postgres": 10.0, "python3": 20.0, "sh": 30.0}
    monkeypatch.setattr(machine, "_processes", lambda: iter(
        [(101, "postgres", 1, cpu["postgres"]), (102, "python3", 1, cpu["python3"]),
         (103, "sh", 1, cpu["sh"])]))
    mark = machine.cpu_mark()
    cpu.update(postgres=12.5, python3=27.0, sh=31.0)
    spent = machine.other_work_since(mark)
    assert spent is not None and spent.database_cpu_seconds == pytest.approx(2.5), spent


def test_the_benchmark_says_how_long_each_steps_progress_stood_still() -> None:
    """The longest wait between moves of a step's committed work: from the step's start to
    its first batch's end, or between two batch ends, whichever is longest."""
    from datetime import UTC, datetime, timedelta

    from bench.pipeline_bench import BenchResult, longest_still, verdicts

    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    ends = {"verify": [start + timedelta(seconds=s) for s in (3.0, 1.5, 4.0)],
            "restore": [start + timedelta(seconds=s) for s in (10.0, 17.5)],
            "notify": [start + timedelta(seconds=30)]}
    still = longest_still({"verify": 4.5, "restore": 9.0, "plan": 1.0}, ends)
    # verify began at -0.5 s: 2.0, 1.5, 1.0; restore began at 8.5 s: 1.5, 7.5.
    assert still == {"verify": 2.0, "restore": 7.5}
    lines = verdicts(BenchResult(accounts=10, batch_size=5, command="x", still_seconds=still))
    assert ("target progress moves at least every 5 s: NOT met (the longest a step's "
            "committed work stood still, batch end to batch end: verify 2.0 s, restore 7.5 s)"
            ) in "\n".join(lines)
    # Notify's card moves notice by notice, whatever its batches take.
    lines = verdicts(BenchResult(accounts=10, batch_size=5, command="x",
                                 still_seconds={"verify": 2.0, "notify": 8.0}))
    assert ("target progress moves at least every 5 s: met (the longest a step's committed "
            "work stood still, batch end to batch end: verify 2.0 s; notify 8.0 s between "
            "batch ends, its card moving notice by notice within each)") in "\n".join(lines)
