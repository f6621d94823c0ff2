"""A real `prefect server start` for the tests that need one (its UI, or a server that can
be stopped): on a free port, with its own PREFECT_HOME. Import the fixtures into a test
module to use them (tests/conftest.py imports them for every module)."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# The server process behind each URL the fixture yields, for a test that stops it.
PROCESSES: dict[str, subprocess.Popen[bytes]] = {}
_template: Path | None = None
_template_lock = threading.Lock()


def _prefect_env(home: Path) -> dict[str, str]:
    """This process's environment for a Prefect of its own in `home`: its database there
    (under either name Prefect reads it by), no API of another server."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                        "PREFECT_SERVER_DATABASE_CONNECTION_URL")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def migrated_prefect_database() -> Path:
    """A Prefect database migrated once in this process, which each server starts from.

    A server given a fresh PREFECT_HOME runs all of Prefect's migrations before it
    answers: 10.5 s to its first healthy answer on a quiet machine, against 5.1 s from a
    migrated copy. `prefect server database upgrade` makes the copy without serving, so
    it holds no run, deployment or block of any test."""
    global _template
    with _template_lock:
        if _template is None:
            home = Path(tempfile.mkdtemp(prefix="prefect-migrated-"))
            atexit.register(shutil.rmtree, home, ignore_errors=True)
            done = subprocess.run(
                [str(Path(sys.executable).with_name("prefect")), "server", "database",
                 "upgrade", "-y"], env=_prefect_env(home), cwd=home, capture_output=True,
                timeout=300)
            database = home / "prefect.db"
            if done.returncode != 0 or not database.exists():
                raise AssertionError(f"Prefect's database was not migrated: "
                                     f"{(done.stdout + done.stderr).decode()[-2000:]}")
            _template = database
        return _template


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@contextmanager
def running_prefect_server(workdir: Path) -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME under `workdir`;
    yields its URL and stops it afterwards, whatever happened.

    `--port` alone does not reach the UI: it asks the API at PREFECT_UI_API_URL, which
    defaults to PREFECT_SERVER_API_PORT (4200), so both are set to the chosen port.

    A batch refused a global concurrency slot is told by the server to come back after
    the limit's average occupancy times the slots waiting, up to 30 s by default: with
    batches of a second or two, a batch slept 14 s while slots stood free.
    docs/scale-out.md has operators cap that wait at 2 s; this server does the same.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_prefect_database(), home / "prefect.db")
    env = _prefect_env(home)
    env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_UI_API_URL=f"{base}/api",
               PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    log = workdir / "prefect-server.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prefect server did not start:\n{log.read_text()}")
            time.sleep(0.3)
        PROCESSES[base] = process
        yield base
    finally:
        PROCESSES.pop(base, None)
        stop_process(process)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME; yields its URL."""
    with running_prefect_server(tmp_path) as base:
        yield base


@pytest.fixture
def real_prefect_api(prefect_server: str) -> Iterator[str]:
    """This process's Prefect client pointed at the real server, for the whole test.

    Prefect's background services in this process (the events worker, the log worker, the
    concurrency slots) keep talking to the server they first met, whatever PREFECT_API_URL
    says later: they are ended before (their work sent where it was meant to go) and again
    after the test, while its server is still up, so they start again with the server of
    the moment. Left bound to this test's server once it stopped, the session's Prefect
    test server could not end: its teardown waited for them to send to a server gone."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _end_prefect_services()
    with temporary_settings({PREFECT_API_URL: f"{prefect_server}/api"}):
        try:
            yield f"{prefect_server}/api"
        finally:
            _end_prefect_services()


def _end_prefect_services() -> None:
    from prefect._internal.concurrency.services import QueueService

    QueueService.drain_all(timeout=20)


