"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

Every database test runs twice, once per backend. A session-wide template database
holds the platform tables and the pipeline's migrated tables; each test gets its own
copy (CREATE DATABASE ... TEMPLATE on PostgreSQL, a file copy on SQLite), so tests never
see each other's rows.

PostgreSQL is expected at 127.0.0.1:5432 (override with REINSTATE_TEST_PG_URL). Where it
cannot be reached the PostgreSQL half is skipped, except under CI=true, where that is a
failure: a green CI must mean both databases were tested.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from reinstatement.resources import forget as forget_resources
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import create_platform, upgrade_pipeline
from tests.prefect_server import prefect_server, real_prefect_api  # noqa: F401 - fixtures
from tests.smtp_server import smtp_server  # noqa: F401 - a fixture shared by several modules

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONTRACT = PROJECT_ROOT / "docs" / "platform-contract.md"
PG_ADMIN_URL = os.environ.get(
    "REINSTATE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")

# The files whose tests take minutes (each starts Prefect servers, workers, browsers or
# killed runs), slowest first. The Makefile hands files to the pytest workers in collection
# order (`--no-loadscope-reorder`; xdist's default order is by test count, which put these
# few-test files last, so one worker ran them while the other sat idle), and this order
# puts them first, so the many quick files fill in behind them.
SLOW_FILES_FIRST = ("test_faults.py", "test_deployments.py", "test_ui_browser.py",
                    "test_ui_browser_failures.py",
                    "test_work_pool.py", "test_lifecycle.py", "test_flow.py",
                    "test_reconcile.py", "test_condition_sql.py", "test_cli_operations.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def _pg_conninfo(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=5)


def _pg_url(database: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


_pg_problem: str | None = None
_pg_checked = False


def pg_unavailable_reason() -> str | None:
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            with _pg_admin() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            _pg_problem = f"PostgreSQL unreachable at {make_url(PG_ADMIN_URL).host}: {exc}"
    return _pg_problem


def require_backend(backend: str) -> None:
    if backend != "postgresql":
        return
    problem = pg_unavailable_reason()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem} (CI=true: the PostgreSQL half of the suite must run)")
    pytest.skip(problem)


class _Templates:
    """One migrated template database per backend, made on first use in the session.

    On PostgreSQL a test's database is made and dropped by a thread beside the tests: the
    next test's copy of the template is made while a test runs, and a finished test's
    database is dropped after it (DROP DATABASE waits on the server's disk, 50 to 500 ms
    here, and CREATE ... TEMPLATE 70 to 120 ms: about 0.4 s a PostgreSQL test, a quarter of
    the quick suite's time, when each test waited for both)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_template: Path | None = None
        self.pg_template: str | None = None
        self.pg_databases: list[str] = []
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[str, str]] = queue.Queue()
        self._spares: queue.Queue[str] = queue.Queue()
        self._helper: threading.Thread | None = None
        self._helper_error: BaseException | None = None

    def _prepare(self, url: str) -> None:
        engine = make_engine(url)
        try:
            create_platform(engine)
            upgrade_pipeline(engine)
        finally:
            engine.dispose()

    def _help(self) -> None:
        """The thread's loop: make a spare copy of the template, or drop a database."""
        with _pg_admin() as conn:
            while True:
                job, name = self._jobs.get()
                try:
                    if job == "stop":
                        return
                    if job == "copy":
                        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"')
                        self._spares.put(name)
                    else:
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                        with self._lock:
                            if name in self.pg_databases:
                                self.pg_databases.remove(name)
                except BaseException as exc:  # told to the next test that asks for one
                    self._helper_error = exc
                    if job == "copy":
                        self._spares.put("")  # no copy: the test waiting makes its own
                finally:
                    self._jobs.task_done()

    def _ask(self, job: str, name: str) -> None:
        if self._helper is None:
            self._helper = threading.Thread(target=self._help, name="test-databases",
                                            daemon=True)
            self._helper.start()
        self._jobs.put((job, name))

    def _copy_later(self) -> None:
        name = f"reinstate_t_{uuid.uuid4().hex[:12]}"
        with self._lock:
            self.pg_databases.append(name)
        self._ask("copy", name)

    def new_database(self, backend: str) -> str:
        if backend == "sqlite":
            if self.sqlite_template is None:
                self.sqlite_template = self.workdir / "template.db"
                self._prepare(f"sqlite:///{self.sqlite_template}")
            target = self.workdir / f"test-{uuid.uuid4().hex[:12]}.db"
            shutil.copyfile(self.sqlite_template, target)
            return f"sqlite:///{target}"
        error, self._helper_error = self._helper_error, None
        if error is not None:
            raise AssertionError(f"the test databases' thread failed: {error}") from error
        if self.pg_template is None:
            name = f"reinstate_tmpl_{uuid.uuid4().hex[:10]}"
            with _pg_admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self._prepare(_pg_url(name))
            self.pg_template = name
            with self._lock:
                self.pg_databases.append(name)
        try:
            # The copy the thread made while the last test ran (waiting for it if the
            # thread is still at it), else one made now.
            name = self._spares.get(timeout=60) if self._helper is not None else ""
        except queue.Empty:
            name = ""
        if not name:
            name = f"reinstate_t_{uuid.uuid4().hex[:12]}"
            with self._lock:
                self.pg_databases.append(name)
            with _pg_admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"')
        self._copy_later()
        return _pg_url(name)

    def empty_database(self, backend: str) -> str:
        """A database with no tables at all (for schema and migration tests)."""
        if backend == "sqlite":
            return f"sqlite:///{self.workdir / f'empty-{uuid.uuid4().hex[:12]}.db'}"
        name = f"reinstate_e_{uuid.uuid4().hex[:12]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with self._lock:
            self.pg_databases.append(name)
        return _pg_url(name)

    def drop(self, url: str) -> None:
        """Dropped by the thread, after the test (or at once, before any test asked for a
        copy of the template)."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql" or parsed.database is None:
            return
        if self._helper is not None:
            self._ask("drop", parsed.database)
            return
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        with self._lock:
            if parsed.database in self.pg_databases:
                self.pg_databases.remove(parsed.database)

    def drop_all(self) -> None:
        if self._helper is not None:
            self._jobs.put(("stop", ""))
            self._helper.join(timeout=120)
            self._helper = None
        if not self.pg_databases or pg_unavailable_reason() is not None:
            return
        with _pg_admin() as conn:
            for name in self.pg_databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.pg_databases.clear()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    holder = _Templates(tmp_path_factory.mktemp("databases"))
    yield holder
    holder.drop_all()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture
def db_url(backend: str, templates: _Templates) -> Iterator[str]:
    """A fresh database with the platform tables and the pipeline's tables, empty."""
    url = templates.new_database(backend)
    yield url
    templates.drop(url)


@pytest.fixture
def empty_db_url(backend: str, templates: _Templates) -> Iterator[str]:
    """A fresh database without any table."""
    url = templates.empty_database(backend)
    yield url
    templates.drop(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running `reinstate` against the test's database."""
    monkeypatch.setenv("REINSTATE_DATABASE_URL", db_url)
    monkeypatch.setenv("REINSTATE_EMAIL_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "file")
    monkeypatch.chdir(tmp_path)
    forget_resources()
    return {"REINSTATE_DATABASE_URL": db_url, "REINSTATE_EMAIL_DIR": str(tmp_path / "outbox")}


@pytest.fixture(scope="session", autouse=True)
def _no_flow_heartbeats() -> Iterator[None]:
    """Flows run in this process send no heartbeat.

    Prefect's flow engine starts a heartbeat thread with each flow run, which sleeps a
    second at a time and is joined when the run ends: a run that takes less than a second
    waits out the rest of it (measured: an empty flow 1.10 s a run against 0.12 s without).
    The suite runs hundreds of flows in process. Nothing in the pipeline reads heartbeats
    (they feed Prefect's zombie-run detection, which it does not set up), and the runs in
    child processes (`serve`, workers) keep them. An environment variable cannot turn them
    off (it must be a number of at least 30), so the session's settings do."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the whole session (it takes seconds to start).

    Yields its API URL, for flows run in child processes.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False}), \
            prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(autouse=True)
def _dispose_cached_engines() -> Iterator[None]:
    """Engines cached by the CLI and tasks belong to one test's database, and the settings
    a process reads once belong to one test's environment."""
    forget_resources()
    yield
    from reinstatement.store.engine import dispose_engines

    forget_resources()
    dispose_engines()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a browser test's screenshots go: REINSTATE_SCREENSHOTS_DIR (docs/ui/ with `make
    ui-screenshots`), else the test's tmp_path."""
    target = os.environ.get("REINSTATE_SCREENSHOTS_DIR")
    directory = Path(target) if target else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
