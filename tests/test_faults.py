"""Killed and concurrent runs: the platform ends exactly as after one uninterrupted run.

Each run here is the real command, `reinstate run`, in a child process talking to the
session's Prefect test server, sending its notices over SMTP to a server in this test
process. A watcher reads the pipeline's tables and sends SIGKILL the moment a step is
under way (planning, verifying, restoring, notifying), then the run is started again;
after the last run the platform, the cases and the notices must equal those of an
uninterrupted run of the same seeded incident on another database, and no notice may
have been delivered twice except one in flight at a kill, with the same Message-ID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from reinstatement.models import AuditEntry, Case, Notice, Run
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    seed,
)
from reinstatement.store.engine import make_engine
from tests.factories import snapshot
from tests.smtp_server import RecordingHandler, ServerFactory, SmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

ACCOUNTS = 1200
BATCH = 20
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_env(db_url: str, api_url: str, smtp: SmtpServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REINSTATE_")}
    env.update({
        "REINSTATE_DATABASE_URL": db_url,
        "REINSTATE_EMAIL_BACKEND": "smtp",
        "REINSTATE_SMTP_HOST": "127.0.0.1",
        "REINSTATE_SMTP_PORT": str(smtp.port),
        "REINSTATE_SMTP_TIMEOUT_SECONDS": "10",
        # A killed run's claimed notices may be taken over after two seconds.
        "REINSTATE_NOTICE_LEASE_SECONDS": "2",
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    })
    return env


def start_run(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "commands.reinstate", "run", INCIDENT_KEY,
        *[arg for name in INCIDENT_FAULTY for arg in ("--faulty", name)],
        "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat(),
        "--batch-size", str(BATCH),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        cases = dict(conn.execute(select(Case.state, func.count()).group_by(Case.state)).all())
        sent = conn.execute(select(func.count()).where(Notice.state == "sent")).scalar_one()
    return {"cases": sum(cases.values()), "verified": sum(
        n for s, n in cases.items() if s not in ("planned", "previewed")),
        "restored": cases.get("restored", 0), "sent": sent}


STEPS = ("planning", "verifying", "restoring", "notifying")
KILLS = 10
KILL_SEED = 20251125  # fixed, so a failure can be replayed


def kill_moments(expected: dict[str, Any], seed: int) -> list[tuple[str, Callable[
        [dict[str, int]], bool]]]:
    """Ten moments drawn at random, at least two in each step: a fraction of its work done."""
    import random

    rng = random.Random(seed)
    cases = len(expected["cases"])
    restored = sum(1 for c in expected["cases"].values() if c[1] == "restored")
    sent = sum(1 for n in expected["notices"].values() if n[0] == "sent")
    measure = {"planning": ("cases", cases), "verifying": ("verified", cases),
               "restoring": ("restored", restored), "notifying": ("sent", sent)}
    moments = []
    for i in range(KILLS):
        step = STEPS[i % len(STEPS)]
        counter, total = measure[step]
        threshold = max(1, int(total * rng.uniform(0.02, 0.9)))
        moments.append((f"{step} at {threshold}/{total}",
                        lambda c, k=counter, t=threshold: c[k] >= t))
    # In the order the run reaches them, so each kill lands inside its step.
    order = {s: n for n, s in enumerate(STEPS)}
    return sorted(moments, key=lambda m: (order[m[0].split()[0]],
                                          int(m[0].split()[2].split("/")[0])))


def kill_when(engine: Engine, env: dict[str, str], log: Path,
              moment: Callable[[dict[str, int]], bool]) -> bool:
    """Start a run and SIGKILL it once `moment` holds; False if it finished first."""
    process = start_run(env, log)
    deadline = time.monotonic() + 180
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if moment(counts(engine)):
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=30)
                    return True
            except Exception:  # noqa: BLE001 - the tables may be mid-creation
                pass
            time.sleep(0.01)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_to_completion(env: dict[str, str], log: Path) -> None:
    process = start_run(env, log)
    assert process.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]


def normalised_platform(engine: Engine) -> dict[str, Any]:
    """The platform with what legitimately differs between runs (times, new ids) left out."""
    snap = snapshot(engine)
    actions = snap["enforcement_actions"]
    unban_owner = {i: r["account_id"] for i, r in actions.items()
                   if r["source"] == "reinstatement"}
    return {
        "accounts": {i: (r["status"], r["username"], r["email"])
                     for i, r in snap["accounts"].items()},
        "bans": {
            i: (r["reversed_at"] is not None,
                ("pipeline", unban_owner[r["reversed_by_action_id"]])
                if r["reversed_by_action_id"] in unban_owner else r["reversed_by_action_id"])
            for i, r in actions.items() if r["source"] != "reinstatement"
        },
        "unbans_per_account": Counter(unban_owner.values()),
        "pins": {i: (r["status"], r["hidden_by_action_id"]) for i, r in snap["pins"].items()},
        "rule_versions": snap["rule_versions"],
    }


def pipeline_outcome(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        cases = {r.account_id: (r.outcome, r.state, r.pins_restored)
                 for r in conn.execute(select(Case.account_id, Case.outcome, Case.state,
                                              Case.pins_restored))}
        notices = {r.account_id: (r.state, r.message_id)
                   for r in conn.execute(select(Notice.account_id, Notice.state,
                                                Notice.message_id))}
    return {"cases": cases, "notices": notices}


def seeded(url: str) -> Engine:
    engine = make_engine(url)
    seed(engine, SeedOptions(accounts=ACCOUNTS, seed=21))
    return engine


_references: dict[str, Any] = {}


@pytest.fixture
def reference(backend: str, templates: Any, prefect_api: str, smtp_server: ServerFactory,
              tmp_path: Path) -> Any:
    """An uninterrupted run of the seeded incident, on its own database and SMTP server.

    Made once per backend: the tests only read what it ended as.
    """
    if backend not in _references:
        url = templates.new_database(backend)
        engine = seeded(url)
        smtp = smtp_server()
        run_to_completion(child_env(url, prefect_api, smtp), tmp_path / "reference.log")
        with engine.connect() as conn:
            (steps_taken,) = conn.execute(select(Run.step_seconds)).scalars().all()
        _references[backend] = (normalised_platform(engine), pipeline_outcome(engine),
                                Counter(smtp.handler.delivered_ids), steps_taken["notify"])
        engine.dispose()
        templates.drop(url)
    return _references[backend]


@pytest.fixture
def postgresql_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no connection to cut")


def test_runs_killed_at_every_step_end_as_an_uninterrupted_run(
    reference: Any, db_url: str, prefect_api: str, smtp_server: ServerFactory,
    tmp_path: Path,
) -> None:
    expected_platform, expected_pipeline, expected_deliveries, _ = reference
    engine = seeded(db_url)
    smtp = smtp_server()
    env = child_env(db_url, prefect_api, smtp)
    log = tmp_path / "killed.log"
    kills_while_sending = 0
    killed = []
    for name, moment in kill_moments(expected_pipeline, seed=KILL_SEED):
        if kill_when(engine, env, log, moment):
            killed.append(name)
            kills_while_sending += name.startswith("notifying")
    # The kills must really have landed, in every step, not after the run ended.
    assert len(killed) >= KILLS - 1, killed
    assert set(STEPS) <= {k.split()[0] for k in killed}, killed
    run_to_completion(env, log)

    assert normalised_platform(engine) == expected_platform
    assert pipeline_outcome(engine) == expected_pipeline
    delivered = smtp.handler.delivered_ids
    assert set(delivered) == set(expected_deliveries)
    duplicates = {mid: n for mid, n in delivered.items() if n > 1}
    # Only a notice whose send was under way at a kill may go twice, under its one id: at
    # most one per SMTP connection open at that moment (REINSTATE_SMTP_CONNECTIONS, 2).
    assert sum(n - 1 for n in duplicates.values()) <= 2 * kills_while_sending, duplicates
    engine.dispose()


def test_two_runs_of_one_incident_at_once_process_each_case_once(
    reference: Any, db_url: str, prefect_api: str, smtp_server: ServerFactory,
    tmp_path: Path,
) -> None:
    expected_platform, expected_pipeline, expected_deliveries, _ = reference
    engine = seeded(db_url)
    # The mail server holds every message until both runs are under way, so that they
    # truly run at once however slowly the machine starts the second one.
    both_started = threading.Event()
    smtp = smtp_server(RecordingHandler(gate=both_started))
    env = {**child_env(db_url, prefect_api, smtp), "REINSTATE_SMTP_TIMEOUT_SECONDS": "200"}
    runs = [start_run(env, tmp_path / f"run{i}.log") for i in range(2)]

    def open_when_both_run() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    if conn.execute(select(func.count()).select_from(Run)).scalar_one() >= 2:
                        break
            except Exception:  # noqa: BLE001 - tables may be mid-creation
                pass
            time.sleep(0.1)
        both_started.set()

    opener = threading.Thread(target=open_when_both_run, daemon=True)
    opener.start()
    for i, process in enumerate(runs):
        assert process.wait(timeout=300) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]
    assert normalised_platform(engine) == expected_platform
    assert pipeline_outcome(engine) == expected_pipeline
    assert smtp.handler.delivered_ids == expected_deliveries
    assert set(expected_deliveries.values()) == {1}
    with engine.connect() as conn:
        transitions = Counter(conn.execute(
            select(AuditEntry.case_id, AuditEntry.to_state)
            .where(AuditEntry.case_id.is_not(None))).all())
    assert max(transitions.values()) == 1, "a case went through the same step twice"
    with engine.connect() as conn:
        spans = conn.execute(select(Run.started_at, Run.finished_at)).all()
    # The two runs really ran at the same time: each began before the other ended.
    assert len(spans) == 2 and all(span.finished_at for span in spans), spans
    assert max(s.started_at for s in spans) < min(s.finished_at for s in spans), spans
    engine.dispose()


def test_database_connections_cut_mid_run_are_retried_to_completion(
    postgresql_only: None, reference: Any, db_url: str, prefect_api: str,
    smtp_server: ServerFactory, tmp_path: Path,
) -> None:
    """Every connection to PostgreSQL is reset while the run restores; the run completes."""
    import threading

    from sqlalchemy.engine import make_url

    from tests.tcp_proxy import TcpProxy

    expected_platform, expected_pipeline, expected_deliveries, _ = reference
    engine = seeded(db_url)
    real = make_url(db_url)
    with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        proxied = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        smtp = smtp_server()
        env = child_env(proxied, prefect_api, smtp)
        stop = threading.Event()

        def cut_while_restoring() -> None:
            while not stop.is_set():
                try:
                    c = counts(engine)
                except Exception:  # noqa: BLE001 - tables may not exist yet
                    c = {"restored": 0, "sent": 0, "cases": 0, "verified": 0}
                if (proxy.cuts == 0 and c["restored"] > 0) or (
                        proxy.cuts == 1 and c["sent"] > 0):
                    proxy.cut_all()
                stop.wait(0.01)

        watcher = threading.Thread(target=cut_while_restoring, daemon=True)
        watcher.start()
        try:
            run_to_completion(env, tmp_path / "cut.log")
        finally:
            stop.set()
            watcher.join(timeout=5)
        assert proxy.cuts == 2, "the connections were not cut during the run"
        assert proxy.connections > 2
    assert normalised_platform(engine) == expected_platform
    assert pipeline_outcome(engine) == expected_pipeline
    assert set(smtp.handler.delivered_ids) == set(expected_deliveries)
    engine.dispose()


NOTIFY_KILLS = (0.15, 0.4, 0.65, 0.85)  # fractions of the notices sent when each kill lands


def test_runs_killed_during_notify_leave_no_notice_waiting(
    postgresql_only: None, reference: Any, db_url: str, prefect_api: str,
    smtp_server: ServerFactory, tmp_path: Path,
) -> None:
    """Killed four times while sending, then run once more: that run sends everything the
    killed runs held at once (no lease to wait for: the claims died with their sessions),
    marks the killed runs crashed, and only then calls the incident completed."""
    from reinstatement.models import Incident

    expected_platform, expected_pipeline, expected_deliveries, reference_notify = reference
    engine = seeded(db_url)
    smtp = smtp_server()
    # A lease far longer than the test: nothing here may wait for one.
    env = {**child_env(db_url, prefect_api, smtp), "REINSTATE_NOTICE_LEASE_SECONDS": "3600"}
    log = tmp_path / "notify-kills.log"
    total = sum(1 for n in expected_pipeline["notices"].values() if n[0] == "sent")
    kills = 0
    for fraction in NOTIFY_KILLS:
        threshold = max(1, int(total * fraction))
        if kill_when(engine, env, log, lambda c, t=threshold: c["sent"] >= t):
            kills += 1
    assert kills >= 3, kills
    with engine.connect() as conn:
        left = conn.execute(select(func.count()).where(Notice.state == "sending")).scalar_one()
    run_to_completion(env, log)

    assert normalised_platform(engine) == expected_platform
    assert pipeline_outcome(engine) == expected_pipeline
    delivered = smtp.handler.delivered_ids
    assert set(delivered) == set(expected_deliveries)
    duplicates = sum(n - 1 for n in delivered.values() if n > 1)
    assert duplicates <= 2 * kills, delivered  # one in flight per connection per kill
    with engine.connect() as conn:
        runs = conn.execute(select(Run.status, Run.step_seconds).order_by(Run.id)).all()
        status = conn.execute(select(Incident.status)).scalar_one()
    assert status == "completed"
    assert [r.status for r in runs].count("crashed") == kills, runs
    assert "running" not in [r.status for r in runs] and runs[-1].status == "completed", runs
    # The last run sent what the killed runs held without waiting: no longer than an
    # uninterrupted run's whole notify step and a few seconds (the lease is an hour).
    assert runs[-1].step_seconds["notify"] <= reference_notify + 10, (runs[-1], left)
    engine.dispose()
