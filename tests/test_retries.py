"""The two retry layers, shown by injecting transient and real errors.

The narrow layer, `retrying.in_transaction`, runs one transaction again from the start
after a serialization failure, a deadlock, a dropped connection or a locked SQLite file,
and raises anything else at once. The wide layer, Prefect's task retries, re-runs a whole
batch task, but only for a failure that may pass (`retry_transient_only`); and a batch
that keeps failing fails the flow run.

No test sleeps for a backoff: tenacity's waits are replaced with `wait_none()` and
Prefect's retry delay with 0.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from sqlalchemy import Connection, Engine, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from tenacity import Retrying, wait_none

from reinstatement import batches, restore, retrying, runner
from reinstatement.incident_request import build_request
from reinstatement.models import AuditEntry, Case, Incident, Notice, Run
from reinstatement.platform_schema import accounts, enforcement_actions
from reinstatement.states import PIPELINE_ACTOR
from reinstatement.store.engine import make_engine, utcnow
from tests.factories import SPAM_CORRECTED, SPAM_FAULTY, T0, WRONGFUL, Platform, snapshot
from tests.test_steps import build_scenario, run_all
from tests.test_steps import request as steps_request


class DriverError(Exception):
    """Stands in for a DB-API driver's exception; psycopg's carry a `sqlstate` like this."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def serialization_failure() -> OperationalError:
    return OperationalError("UPDATE ...", {}, DriverError(
        "could not serialize access due to concurrent update", "40001"))


def no_wait(attempts: int = 5) -> Retrying:
    """The production retry policy with the waits taken out."""
    return retrying.transaction_retrying(attempts=attempts).copy(wait=wait_none())


TRANSIENT: dict[str, Callable[[], DBAPIError]] = {
    "serialization failure 40001": serialization_failure,
    "deadlock 40P01": lambda: OperationalError(
        "UPDATE ...", {}, DriverError("deadlock detected", "40P01")),
    "connection invalidated": lambda: DBAPIError(
        "SELECT 1", {}, DriverError("server closed the connection unexpectedly"),
        connection_invalidated=True),
    "sqlite database is locked": lambda: OperationalError(
        "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")),
}

NOT_TRANSIENT: dict[str, Callable[[], Exception]] = {
    "IntegrityError": lambda: IntegrityError(
        "INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: x.key")),
    "unique violation 23505": lambda: IntegrityError(
        "INSERT ...", {}, DriverError("duplicate key value", "23505")),
    "OperationalError with a non-transient sqlstate": lambda: OperationalError(
        "SELECT ...", {}, DriverError("syntax error at or near", "42601")),
    "ValueError": lambda: ValueError("a bug, not bad luck"),
}


# -- in_transaction ---------------------------------------------------------------------


class FlakyWork:
    """Writes one incident row, then fails the first `failures` times with `error()`."""

    def __init__(self, error: Callable[[], BaseException], failures: int) -> None:
        self.error = error
        self.failures = failures
        self.attempts = 0
        self.raised: list[BaseException] = []

    def __call__(self, conn: Connection) -> str:
        self.attempts += 1
        now = utcnow()
        conn.execute(insert(Incident).values(key="INC-RETRY", params={}, params_digest="0",
                                             created_at=now, updated_at=now))
        if self.attempts <= self.failures:
            error = self.error()
            self.raised.append(error)
            raise error
        return f"done on attempt {self.attempts}"


def incident_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Incident)).scalar_one())


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_a_transient_error_reruns_the_whole_transaction(
    engine: Engine, error: Callable[[], DBAPIError]
) -> None:
    assert retrying.is_transient(error())
    work = FlakyWork(error, failures=2)
    assert retrying.in_transaction(engine, work, no_wait()) == "done on attempt 3"
    assert work.attempts == 3
    # The failed attempts' rows were rolled back; the one commit's row is there.
    assert incident_rows(engine) == 1


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_the_retry_gives_up_at_the_stop_with_the_original_error(
    engine: Engine, error: Callable[[], DBAPIError]
) -> None:
    work = FlakyWork(error, failures=100)
    with pytest.raises(DBAPIError) as raised:
        retrying.in_transaction(engine, work, no_wait())  # the production stop: 5 attempts
    assert work.attempts == 5
    assert raised.value is work.raised[-1]  # reraise=True: not a tenacity.RetryError
    assert incident_rows(engine) == 0


@pytest.mark.parametrize("error", NOT_TRANSIENT.values(), ids=NOT_TRANSIENT.keys())
def test_a_real_error_is_raised_at_once(engine: Engine, error: Callable[[], Exception]
                                        ) -> None:
    assert not retrying.is_transient(error())
    work = FlakyWork(error, failures=100)
    with pytest.raises(type(error())) as raised:
        retrying.in_transaction(engine, work, no_wait())
    assert work.attempts == 1
    assert raised.value is work.raised[0]
    assert incident_rows(engine) == 0


@pytest.fixture
def sqlite_lock_holder(engine: Engine) -> Iterator[Callable[[], None]]:
    """Another connection holding SQLite's write lock, and a way to let it go."""
    holder = engine.raw_connection()
    holder.cursor().execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            holder.commit()
            released.set()

    yield release
    release()
    holder.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_real_sqlite_lock_is_waited_out(
    engine: Engine, db_url: str, sqlite_lock_holder: Callable[[], None]
) -> None:
    # An engine that gives up on the lock at once instead of after the pipeline's 60 s
    # (this listener runs after make_engine's own); the tenacity "sleep" between the
    # attempts is where the other connection lets the lock go.
    impatient = make_engine(db_url, connect_args={"check_same_thread": False, "timeout": 0})
    event.listen(impatient, "connect",
                 lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout = 0"))
    failures: list[BaseException | None] = []
    policy = no_wait().copy(
        sleep=lambda _seconds: sqlite_lock_holder(),
        before_sleep=lambda state: failures.append(state.outcome and state.outcome.exception()),
    )
    work = FlakyWork(lambda: AssertionError("never raised"), failures=0)
    try:
        # BEGIN IMMEDIATE fails before `work` runs; the second attempt gets the lock.
        assert retrying.in_transaction(impatient, work, policy) == "done on attempt 1"
    finally:
        impatient.dispose()
    (locked,) = failures
    assert isinstance(locked, OperationalError)
    assert "database is locked" in str(locked)
    assert incident_rows(engine) == 1


# Errors raised by PostgreSQL itself, with their real SQLSTATE, through psycopg.
RAISE_ON_SERVER = {
    "40001": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
    "40P01": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40P01'; END $$",
    "23505": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '23505'; END $$",
}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_real_postgresql_errors_are_told_apart(engine: Engine) -> None:
    sqlstates = ["40001", "40P01"]

    def work(conn: Connection) -> str:
        now = utcnow()
        conn.execute(insert(Incident).values(key="INC-RETRY", params={}, params_digest="0",
                                             created_at=now, updated_at=now))
        if sqlstates:
            conn.execute(text(RAISE_ON_SERVER[sqlstates.pop(0)]))
        return "committed"

    assert retrying.in_transaction(engine, work, no_wait()) == "committed"
    assert sqlstates == []
    assert incident_rows(engine) == 1

    attempts: list[int] = []

    def unique_violation(conn: Connection) -> None:
        attempts.append(1)
        conn.execute(text(RAISE_ON_SERVER["23505"]))

    with pytest.raises(IntegrityError) as raised:
        retrying.in_transaction(engine, unique_violation, no_wait())
    assert len(attempts) == 1
    assert getattr(raised.value.orig, "sqlstate", None) == "23505"


FAIL_WITH_FUNCTION = """
CREATE FUNCTION pg_temp.fail_with(code text, payload text) RETURNS int AS $$
BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = code; END $$ LANGUAGE plpgsql
"""


def test_retry_logs_carry_no_statement_parameters(
    engine: Engine, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed statement's parameters (here an address) stay out of the retry's log."""
    address = "jane.doe@example.test"
    failures = [1]

    def work(conn: Connection) -> str:
        if failures:
            failures.pop()
            if backend == "postgresql":  # the server raises, the driver wraps
                conn.execute(text(FAIL_WITH_FUNCTION))
                conn.execute(text("SELECT pg_temp.fail_with('40001', :recipient)"),
                             {"recipient": address})
            raise OperationalError("INSERT INTO reinstatement_notices ...",
                                   {"recipient": address},
                                   sqlite3.OperationalError("database is locked"))
        return "committed"

    caplog.set_level(logging.DEBUG)
    assert retrying.in_transaction(engine, work, no_wait()) == "committed"
    retries = [r for r in caplog.records if r.name == retrying.logger.name]
    assert len(retries) == 1
    assert "40001" in retries[0].getMessage() or "locked" in retries[0].getMessage()
    for record in caplog.records:
        assert address not in record.getMessage()
        assert not record.exc_info or address not in logging.Formatter().formatException(
            record.exc_info)


# -- a restore batch whose first attempt fails midway ------------------------------------


def normalised_platform(engine: Engine) -> dict[str, Any]:
    """The platform without what may differ between two equal runs: times, new ids, and
    the factory's serial numbers in usernames and addresses."""
    snap = snapshot(engine)
    actions = snap["enforcement_actions"]
    unban_owner = {i: r["account_id"] for i, r in actions.items()
                   if r["source"] == "reinstatement"}
    return {
        "accounts": {i: {k: v for k, v in r.items()
                         if k not in ("updated_at", "username", "email")}
                     for i, r in snap["accounts"].items()},
        "bans": {i: (r["reversed_at"] is not None,
                     ("unban of", unban_owner[r["reversed_by_action_id"]])
                     if r["reversed_by_action_id"] in unban_owner
                     else r["reversed_by_action_id"])
                 for i, r in actions.items() if i not in unban_owner},
        "unbans": Counter((r["account_id"], r["kind"], r["actor"], r["reason"])
                          for i, r in actions.items() if i in unban_owner),
        "pins": {i: (r["status"], r["hidden_by_action_id"]) for i, r in snap["pins"].items()},
        "rule_versions": snap["rule_versions"],
    }


def pipeline_outcome(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "cases": sorted(conn.execute(select(Case.account_id, Case.state, Case.outcome,
                                                Case.pins_restored)).all()),
            "notices": sorted(conn.execute(select(Notice.account_id, Notice.state,
                                                  Notice.message_id)).all()),
            "audit": Counter(conn.execute(select(AuditEntry.case_id, AuditEntry.from_state,
                                                 AuditEntry.to_state)).all()),
        }


@pytest.fixture
def clean_twin(backend: str, templates: Any) -> Iterator[Engine]:
    """A second fresh database on the same backend, for an uninterrupted run."""
    url = templates.new_database(backend)
    twin = make_engine(url)
    yield twin
    twin.dispose()
    templates.drop(url)


def test_a_restore_batch_failing_midway_ends_as_a_clean_run(
    engine: Engine, clean_twin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_scenario(clean_twin)
    run_all(clean_twin, steps_request(batch_size=10))

    scenario = build_scenario(engine)
    without_waits = no_wait()  # the runner's policy, without its waits
    monkeypatch.setattr(retrying, "transaction_retrying", lambda *a, **k: without_waits.copy())
    seen: list[int] = []

    def failing_once(real: Any) -> Any:
        def platform_writes_then_failing_once(conn: Connection, *args: Any) -> Any:
            written = real(conn, *args)
            if not seen:
                # Midway: accounts are active, unbans written and pins shown in this
                # transaction; the case checkpoints and notices are not written yet.
                seen.append(conn.execute(select(func.count()).select_from(enforcement_actions)
                                         .where(enforcement_actions.c.kind == "unban",
                                                enforcement_actions.c.source == "reinstatement")
                                         ).scalar_one())
                raise serialization_failure()
            seen.append(-1)
            return written
        return platform_writes_then_failing_once

    monkeypatch.setattr(restore, "_restore_pins", failing_once(restore._restore_pins))
    monkeypatch.setattr(restore, "_restore_on_postgresql",
                        failing_once(restore._restore_on_postgresql))
    run_all(engine, steps_request(batch_size=10))

    reinstated = {a for a, o in scenario.expected.items() if o == "reinstated"}
    assert seen == [len(reinstated), -1]  # failed once after writing, then ran again
    assert normalised_platform(engine) == normalised_platform(clean_twin)
    assert pipeline_outcome(engine) == pipeline_outcome(clean_twin)
    with engine.connect() as conn:
        unbans = Counter(conn.execute(
            select(enforcement_actions.c.account_id)
            .where(enforcement_actions.c.kind == "unban",
                   enforcement_actions.c.source == "reinstatement")).scalars())
        statuses = dict(conn.execute(select(accounts.c.id, accounts.c.status)
                                     .where(accounts.c.id.in_(reinstated))).all())
    assert unbans == Counter(dict.fromkeys(reinstated, 1))
    assert set(statuses.values()) == {"active"}


# -- Prefect task retries for a whole batch -----------------------------------------------

VERIFY_KEY = "INC-RETRY-PREFECT"


def planned_incident(engine: Engine, accounts_count: int = 4) -> None:
    """A few wrongly banned accounts, registered and planned, waiting for verification."""
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", SPAM_FAULTY)
        p.rule("spam", 8, "active", SPAM_CORRECTED)
        for _ in range(accounts_count):
            p.ban(p.account(), faulty, WRONGFUL)
    req = build_request(incident_key=VERIFY_KEY, faulty_versions=["spam@7"],
                        since=T0 - timedelta(days=1), until=T0 + timedelta(days=1),
                        batch_size=10, require_approval=False)
    incident = runner.register(engine, req, PIPELINE_ACTOR)
    runner.plan_all(runner.StepContext(engine, incident, 10))


@flow(name="verify-one-batch-under-test")
def verify_flow(incident_key: str, batch_size: int) -> dict[str, Any]:
    from reinstatement.incidents import load_incident
    from reinstatement.settings import load_settings
    from reinstatement.store.engine import get_engine
    from tasks.pipeline import verify_cases

    with get_engine(load_settings().database_url).connect() as conn:
        incident = load_incident(conn, incident_key)
    return verify_cases.with_options(retry_delay_seconds=0)(incident, batch_size, False)


def failing_first(monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception],
                  failures: int) -> list[int]:
    """Make runner.verify_one_batch raise `error()` on its first `failures` calls."""
    real = runner.verify_one_batch
    calls: list[int] = []

    def verify_one_batch(ctx: runner.StepContext, preview: bool) -> batches.StepResult:
        calls.append(1)
        if len(calls) <= failures:
            raise error()
        return real(ctx, preview)

    monkeypatch.setattr(runner, "verify_one_batch", verify_one_batch)
    return calls


@pytest.mark.prefect
def test_a_transient_failure_retries_the_batch_task(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    planned_incident(engine)
    calls = failing_first(monkeypatch, serialization_failure, failures=1)

    state = verify_flow(VERIFY_KEY, 10, return_state=True)

    assert state.is_completed(), state
    assert state.result()["cases"] == 4
    assert len(calls) == 2
    with engine.connect() as conn:
        assert Counter(conn.execute(select(Case.state)).scalars()) == Counter(verified=4)


@pytest.mark.prefect
@pytest.mark.parametrize("error", [NOT_TRANSIENT["ValueError"],
                                   NOT_TRANSIENT["unique violation 23505"]],
                         ids=["ValueError", "unique violation 23505"])
def test_a_real_failure_is_not_retried_and_fails_the_flow(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]
) -> None:
    planned_incident(engine)
    calls = failing_first(monkeypatch, error, failures=100)

    state = verify_flow(VERIFY_KEY, 10, return_state=True)

    assert state.is_failed(), state
    assert len(calls) == 1
    with engine.connect() as conn:
        assert Counter(conn.execute(select(Case.state)).scalars()) == Counter(planned=4)


@pytest.mark.prefect
def test_a_failed_batch_fails_the_whole_flow_run(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    from flows.batches import BatchesFailed
    from flows.reinstate_incident import reinstate_incident
    from reinstatement.seed import (
        INCIDENT_FAULTY,
        INCIDENT_KEY,
        INCIDENT_SINCE,
        INCIDENT_UNTIL,
        SeedOptions,
        seed,
    )

    seed(engine, SeedOptions(accounts=120, seed=11))
    before = snapshot(engine)
    flow_runs: set[str] = set()
    calls: list[int] = []

    def settle_one_batch(ctx: runner.StepContext) -> batches.StepResult:
        calls.append(1)
        flow_runs.add(ctx.actor.removeprefix("flow-run:"))
        raise RuntimeError("a bug in the restore, not bad luck")

    # Without approval, verifying and restoring is one step: settle.
    monkeypatch.setattr(runner, "settle_one_batch", settle_one_batch)
    req = build_request(incident_key=INCIDENT_KEY, faulty_versions=list(INCIDENT_FAULTY),
                        since=INCIDENT_SINCE, until=INCIDENT_UNTIL, batch_size=50,
                        require_approval=False)

    with pytest.raises(BatchesFailed, match="settle batches failed"):
        reinstate_incident(req)

    assert calls  # the restore step was reached, and each batch was tried once
    (flow_run_id,) = flow_runs
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(flow_run_id))
    assert flow_run.state is not None and flow_run.state.is_failed(), flow_run.state
    assert snapshot(engine) == before  # nothing restored
    with engine.connect() as conn:
        assert conn.execute(select(Run.status)).scalars().all() == ["failed"]
        status = conn.execute(select(Incident.status)).scalar_one()
    assert status != "completed"
