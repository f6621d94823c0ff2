"""One incident on several workers: a real Prefect server, a process work pool, two
`prefect worker start` processes, and an incident fanned out to two child runs per step.

Everything here is the operator's own commands in child processes: `reinstate deploy`
registers the deployments and the global limits on the pool, two workers (each taking one
flow run at a time, `--limit 1`, so the two child runs of a step land on different
workers) execute the child runs, and `reinstate run --child-runs 2` is the incident run
that launches them. Notices go over SMTP to a server in this test process that counts the
connections open at once and records when each message arrived.

What is compared: the cases and the platform rows against the same incident reinstated by
one process without Prefect on another database (`runner.run_without_prefect`); the
batches each worker recorded (reinstatement_batches); each case's audit trail (one
verification and, for a reinstatement, one restore); the Message-IDs the SMTP server got.
PostgreSQL only: two workers share claims through SKIP LOCKED and advisory locks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from sqlalchemy import Engine, func, select

from reinstatement import runner
from reinstatement.models import AuditEntry, Batch, Case, Incident, Notice, Run
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    seed,
)
from reinstatement.store.engine import make_engine
from tests.factories import seeded_incident_request
from tests.prefect_server import running_prefect_server, stop_process
from tests.smtp_server import RecordingHandler, free_port
from tests.test_faults import normalised_platform

pytestmark = [pytest.mark.slow, pytest.mark.prefect,
              pytest.mark.parametrize("backend", ["postgresql"], indirect=True)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCOUNTS = 1500
SEED = 16
BATCH = 100
MARKER = "REINSTATE_TEST_WORKER"


# -- an SMTP server that counts connections and times deliveries ---------------------------

@dataclass
class Connections:
    open: int = 0
    most: int = 0
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class TimedHandler(RecordingHandler):
    """Records when each message was accepted (time.monotonic())."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.times: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if answer.startswith("250"):
            self.times.append(time.monotonic())
        return answer


class CountingController(Controller):
    """An aiosmtpd controller whose sessions count the connections open at once."""

    def __init__(self, handler: Any, connections: Connections, **kwargs: Any) -> None:
        self.connections = connections
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        connections = self.connections

        class CountingSMTP(SMTP):
            def connection_made(self, transport: Any) -> None:
                with connections.lock:
                    connections.open += 1
                    connections.total += 1
                    connections.most = max(connections.most, connections.open)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                try:
                    super().connection_lost(error)
                finally:
                    with connections.lock:
                        connections.open -= 1

        return CountingSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class Mailbox:
    handler: TimedHandler
    connections: Connections
    port: int


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    handler = TimedHandler()
    connections = Connections()
    port = free_port()
    controller = CountingController(handler, connections, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Mailbox(handler, connections, port)
    finally:
        controller.stop()


# -- a Prefect server, a pool and its workers -----------------------------------------------

@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `prefect server start` for this module's tests; its API URL."""
    with running_prefect_server(tmp_path_factory.mktemp("pool-server")) as base:
        yield f"{base}/api"


def _marked(marker: str) -> list[int]:
    """Every process whose environment carries MARKER=marker: a worker and the flow-run
    processes it started (those run in sessions of their own, so only this finds them)."""
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_marked(marker: str) -> None:
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Pool:
    api: str
    name: str
    env: dict[str, str]
    tmp: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)

    def deploy(self, *options: str) -> str:
        done = subprocess.run([str(BIN / "reinstate"), "deploy", "--pool", self.name, *options],
                              env=self.env, cwd=self.tmp, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode()

    def start_worker(self, name: str) -> None:
        marker = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {**self.env, MARKER: marker, "PREFECT_HOME": str(self.tmp / f"{name}-home"),
               "PREFECT_WORKER_QUERY_SECONDS": "1"}
        with (self.tmp / f"{name}.log").open("ab") as out:
            self.workers[name] = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", self.name, "--name", name,
                 "--type", "process", "--limit", "1"],
                env=env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT)
        self.markers[name] = marker

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and every flow-run process it started, as when its machine
        dies."""
        _kill_marked(self.markers[name])
        self.workers[name].wait(timeout=30)

    def processes(self, name: str) -> set[int]:
        return set(_marked(self.markers[name]))

    def stop(self) -> None:
        for name, process in self.workers.items():
            stop_process(process)
            _kill_marked(self.markers[name])

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def pool(pool_server: str, db_url: str, mailbox: Mailbox, tmp_path: Path) -> Iterator[Pool]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REINSTATE_", "PREFECT_"))}
    env.update({
        "PREFECT_API_URL": pool_server,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "REINSTATE_DATABASE_URL": db_url,
        "REINSTATE_EMAIL_BACKEND": "smtp",
        "REINSTATE_SMTP_HOST": "127.0.0.1",
        "REINSTATE_SMTP_PORT": str(mailbox.port),
        "REINSTATE_SMTP_TIMEOUT_SECONDS": "10",
        # Two batches and two connections per flow run: only the global limits keep the
        # sum across processes lower.
        "REINSTATE_WORKERS": "2",
        "REINSTATE_SMTP_CONNECTIONS": "2",
    })
    the_pool = Pool(pool_server, f"pool-{uuid.uuid4().hex[:8]}", env, tmp_path)
    try:
        yield the_pool
    finally:
        the_pool.stop()


def start_incident(pool: Pool, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(BIN / "reinstate"), "run", INCIDENT_KEY,
        *[arg for name in INCIDENT_FAULTY for arg in ("--faulty", name)],
        "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat(),
        "--batch-size", str(BATCH), "--child-runs", "2",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=pool.env, cwd=pool.tmp, stdout=out,
                                stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen[bytes], pool: Pool, timeout: float = 300) -> None:
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the incident run did not end\n{pool.logs()}") from None
    assert status == 0, pool.logs()


# -- what a single process makes of the same incident ---------------------------------------

def reference(templates: Any) -> tuple[dict[str, Any], dict[int, tuple[Any, ...]]]:
    """The incident reinstated by one process, without Prefect, on its own database."""
    url = templates.new_database("postgresql")
    engine = make_engine(url)
    try:
        seed(engine, SeedOptions(accounts=ACCOUNTS, seed=SEED))
        # Restored, its notices queued (it sends none: the incident stays running).
        state = runner.run_without_prefect(engine, seeded_incident_request(batch_size=BATCH))
        assert state.status == "running"
        return normalised_platform(engine), cases_by_account(engine)
    finally:
        engine.dispose()
        templates.drop(url)


def cases_by_account(engine: Engine) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {r.account_id: (r.outcome, r.state, r.pins_restored, r.message_id)
                for r in conn.execute(
                    select(Case.account_id, Case.outcome, Case.state, Case.pins_restored,
                           Notice.message_id).outerjoin(Notice, Notice.case_id == Case.id))}


def check_each_case_done_once(engine: Engine) -> None:
    """Every case verified once and every reinstatement restored once, by the audit trail
    and by the batches the workers recorded (an incident without approval verifies and
    restores in one pass: its batches are the settle step's)."""
    with engine.connect() as conn:
        cases = conn.execute(select(func.count()).select_from(Case)).scalar_one()
        reinstated = conn.execute(select(func.count()).where(Case.state == "restored")
                                  ).scalar_one()
        verified = Counter(conn.execute(select(AuditEntry.case_id).where(
            AuditEntry.case_id.is_not(None), AuditEntry.from_state == "planned")).scalars())
        restored = Counter(conn.execute(select(AuditEntry.case_id).where(
            AuditEntry.to_state == "restored")).scalars())
        by_step = dict(conn.execute(select(Batch.step, func.sum(Batch.cases))
                                    .group_by(Batch.step)).all())
        settled = conn.execute(select(Batch.detail).where(Batch.step == "settle")
                               ).scalars().all()
    assert len(verified) == cases and set(verified.values()) == {1}
    assert len(restored) == reinstated and set(restored.values()) == {1}
    assert by_step["settle"] == cases
    assert "verify" not in by_step and "restore" not in by_step
    assert sum(detail["restored"] for detail in settled) == reinstated


def workers_of_batches(engine: Engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Batch.step, Batch.worker).distinct()).all()
    found: dict[str, set[str]] = {}
    for step, worker in rows:
        found.setdefault(step, set()).add(worker)
    return found


# -- the tests ------------------------------------------------------------------------------

def test_two_workers_share_an_incident_and_hold_the_global_limits(
    pool: Pool, engine: Engine, mailbox: Mailbox, templates: Any, tmp_path: Path
) -> None:
    summary = seed(engine, SeedOptions(accounts=ACCOUNTS, seed=SEED))
    output = pool.deploy("--database-batches", "4", "--smtp-connections", "1",
                         "--mail-rate", "100000")
    assert "reinstatement-smtp-connections: 1 at once" in output
    # One connection per child run: two processes, each wanting one, and a global limit
    # of one between them (more senders per process only queue longer for the slot).
    pool.env["REINSTATE_SMTP_CONNECTIONS"] = "1"
    pool.start_worker("w1")
    pool.start_worker("w2")

    finish(start_incident(pool, tmp_path / "incident.log"), pool)

    # Both workers executed batches; each batch recorded where it ran.
    ran = workers_of_batches(engine)
    assert set().union(*ran.values()) == {"w1", "w2"}, ran
    check_each_case_done_once(engine)

    # Outcomes and platform rows as one process leaves them; every notice once.
    platform, cases = reference(templates)
    assert normalised_platform(engine) == platform
    assert cases_by_account(engine) == cases
    with engine.connect() as conn:
        notices = dict(conn.execute(select(Notice.state, func.count())
                                    .group_by(Notice.state)).all())
        outcomes = Counter(dict(conn.execute(select(Case.outcome, func.count())
                                             .group_by(Case.outcome)).all()))
    assert outcomes == Counter(summary.expected_outcomes)
    assert set(notices) <= {"sent", "no_address"}
    delivered = mailbox.handler.delivered_ids
    assert len(delivered) == notices["sent"] and set(delivered.values()) == {1}

    # The global limit of one SMTP connection held across both workers' senders (the mail
    # rate across processes: test_the_mail_rate_holds_across_processes).
    assert mailbox.connections.total > 1
    assert mailbox.connections.most == 1, mailbox.connections

    # Where the batches ran, in the report (JSON) and in the report artifact.
    import json

    done = subprocess.run([str(BIN / "reinstate"), "report", INCIDENT_KEY, "--json"],
                          env=pool.env, capture_output=True, timeout=60, check=True)
    (run,) = json.loads(done.stdout)["runs"]
    places = {(w["worker"], w["step"]) for w in run["workers"]}
    assert {worker for worker, _ in places} == {"w1", "w2"}
    assert {step for _, step in places} == {"settle", "notify"}
    assert all(w["host"] and w["pid"] for w in run["workers"])
    assert sum(w["cases"] for w in run["workers"] if w["step"] == "settle") == sum(
        summary.expected_outcomes.values())
    markdown = report_artifact(pool.api)
    assert "| w1 |" in markdown and "| w2 |" in markdown
    # The incident run's cards of its fanned-out steps, each ended by the parent.
    cases = sum(summary.expected_outcomes.values())
    sent = notices["sent"]
    assert progress_card(pool.api, "settle") == (100.0, f"settle: {cases:,} of {cases:,} done")
    assert progress_card(pool.api, "notify") == (
        100.0, f"notify: {sent:,} of {sent:,} done: {sent:,} sent, 0 to retry, 0 failed")

    # The same run again, with nothing left to do: a no-op, and the incident stays
    # completed (each step's result has one shape, empty or not).
    before = normalised_platform(engine)
    with engine.connect() as conn:
        audited = conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
    finish(start_incident(pool, tmp_path / "again.log"), pool)
    assert "completed" in (tmp_path / "again.log").read_text()
    with engine.connect() as conn:
        assert conn.execute(select(Incident.status)).scalar_one() == "completed"
        assert conn.execute(select(func.count()).select_from(AuditEntry)
                            ).scalar_one() == audited  # not even to running and back
    assert normalised_platform(engine) == before


def progress_card(api: str, step: str) -> tuple[Any, str | None]:
    """The progress card of `step`, latest: its value and its text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.artifacts import artifact_key

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key(INCIDENT_KEY, f"progress-{step}")])))
    return artifact.data, artifact.description


def report_artifact(api: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.artifacts import artifact_key

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key(INCIDENT_KEY, "report")])))
    return str(artifact.data)


def test_a_worker_killed_mid_step_loses_and_repeats_nothing_but_notices_in_flight(
    pool: Pool, engine: Engine, mailbox: Mailbox, templates: Any, tmp_path: Path
) -> None:
    seed(engine, SeedOptions(accounts=ACCOUNTS, seed=SEED))
    # So that notify lasts long enough to kill in: at 0.01 s a message, a busy machine once
    # saw w2's child run finish between being found sending and being killed.
    mailbox.handler.slow_data_seconds = 0.03
    pool.deploy("--database-batches", "4", "--smtp-connections", "2", "--mail-rate", "100000")
    pool.start_worker("w1")
    pool.start_worker("w2")
    incident = start_incident(pool, tmp_path / "incident.log")

    # Wait for w2's child run of the notify step to be sending, then kill w2 and its runs.
    victim: tuple[int, str] | None = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and incident.poll() is None:
        with engine.connect() as conn:
            sent = conn.execute(select(func.count()).where(Notice.state == "sent")
                                ).scalar_one()
            children = conn.execute(select(Run.pid, Run.flow_run_id).where(
                Run.step == "notify", Run.status == "running")).all()
        on_w2 = [c for c in children if c.pid in pool.processes("w2")]
        if on_w2 and sent >= 100:
            victim = (on_w2[0].pid, on_w2[0].flow_run_id)
            pool.kill_worker("w2")
        time.sleep(0.05)
    assert victim is not None, "w2 never ran a notify child run\n" + pool.logs()

    finish(incident, pool)

    # The dead child run was found dead and marked so, in Prefect and in the pipeline.
    with engine.connect() as conn:
        status = conn.execute(select(Run.status).where(Run.flow_run_id == victim[1])
                              ).scalar_one()
    assert status == "crashed"
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: pool.api}), get_client(sync_client=True) as c:
        assert c.read_flow_run(uuid.UUID(victim[1])).state.type.value == "CRASHED"

    # Nothing lost, nothing done twice; only notices in flight at the kill were sent
    # again, at most one per SMTP connection it held, with the same Message-ID.
    check_each_case_done_once(engine)
    platform, cases = reference(templates)
    assert normalised_platform(engine) == platform
    assert cases_by_account(engine) == cases
    with engine.connect() as conn:
        ids = dict(conn.execute(select(Notice.message_id, Notice.state)).all())
    sendable = {m for m, state in ids.items() if state != "no_address"}
    assert {ids[m] for m in sendable} == {"sent"}
    delivered = mailbox.handler.delivered_ids
    assert set(delivered) == sendable
    assert sum(n - 1 for n in delivered.values()) <= 2, delivered.most_common(3)


PACE_SCRIPT = """
import sys, time
from prefect.settings import PREFECT_API_URL, temporary_settings
from tasks.limits import mail_rate
with temporary_settings({PREFECT_API_URL: sys.argv[1]}):
    pacer = mail_rate()
    assert pacer is not None and pacer.global_limit is not None, pacer
    sys.stdout.write(f"ready {pacer.chunk}\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        pacer.acquire()
        sys.stdout.write(f"{time.time()}\\n")
"""


def test_the_mail_rate_holds_across_processes(pool: Pool) -> None:
    """Two processes drawing notices from reinstatement-mail-rate together stay within it."""
    rate, each = 20.0, 40
    pool.deploy("--mail-rate", str(rate))
    processes = [subprocess.Popen([sys.executable, "-c", PACE_SCRIPT, pool.api, str(each)],
                                  env={**pool.env, "PYTHONPATH": str(PROJECT_ROOT)},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(2)]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(b"ready 2")  # a tenth of 20/s
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        moments = sorted(float(line) for process in processes
                         for line in process.communicate(timeout=180)[0].split())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert len(moments) == 2 * each
    span = moments[-1] - moments[0]
    # One second's burst (20), then 20 a second at most: 80 sends take at least 3 s.
    # (Not how much slower: Prefect's retry spacing delivers below the rate when the
    # senders contend, the more so on a busy machine; see docs/scale-out.md.)
    assert span >= (2 * each - rate) / rate * 0.95, span


def test_a_stale_serve_and_a_worker_with_other_settings_deliver_where_the_incident_says(
    pool: Pool, engine: Engine, mailbox: Mailbox, tmp_path: Path
) -> None:
    """`reinstate serve` left running with its own settings (notices into files) when an
    operator runs `reinstate deploy`: it stops serving once the deployments are on the
    pool, and will not start again on them (exit 2, one line). A worker started with the
    same stale settings runs the child runs with the incident run's settings: every notice
    reaches the configured SMTP server, none the stale folder."""
    seed(engine, SeedOptions(accounts=600, seed=SEED))
    stale_dir = tmp_path / "stale-outbox"
    stale = {**pool.env, "REINSTATE_EMAIL_BACKEND": "file",
             "REINSTATE_EMAIL_DIR": str(stale_dir)}
    log = tmp_path / "stale-serve.log"
    with log.open("ab") as out:
        # --take-over: this module's earlier tests left the deployments on their pools
        serve = subprocess.Popen([str(BIN / "reinstate"), "serve", "--take-over"], env=stale,
                                 cwd=pool.tmp, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while b"serving " not in log.read_bytes():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        pool.deploy("--database-batches", "4", "--smtp-connections", "2",
                    "--mail-rate", "100000")
        serve.wait(timeout=60)  # it stops serving: the pool's workers run them now
        assert f"registered on the work pool {pool.name}" in log.read_text(), log.read_text()
    finally:
        stop_process(serve)
    again = subprocess.run([str(BIN / "reinstate"), "serve"], env=stale, cwd=pool.tmp,
                           capture_output=True, timeout=120)
    assert again.returncode == 2, again
    lines = again.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"on the work pool {pool.name}" in lines[0], lines

    pool.env, fresh = stale, pool.env  # the worker starts with the stale settings
    pool.start_worker("w1")
    pool.env = fresh  # the incident run with the operator's
    finish(start_incident(pool, tmp_path / "incident.log"), pool)
    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).where(Notice.state == "sent")).scalar_one()
    assert sent > 0
    assert len(mailbox.handler.delivered_ids) == sent
    assert not stale_dir.exists() or not list(stale_dir.iterdir())
