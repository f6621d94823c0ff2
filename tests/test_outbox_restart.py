"""A restart of PostgreSQL in the middle of sending notices: at most one notice sent twice
per SMTP connection that was sending, each with its Message-ID.

The shared server cannot be restarted under the rest of the suite, so this test starts a
private cluster of its own (initdb into a temporary folder, as the `postgres` user, on a
free port), queues notices there, and sends them over two SMTP connections to a real SMTP
server (aiosmtpd) slow enough that the restart lands mid-way. The server is restarted both
ways it can be: a fast shutdown (every commit flushed) and an immediate one (as a crash:
only what reached the disk survives). Then the notices left are sent as the nightly
reconciliation would, and each Message-ID's deliveries are counted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from reinstatement import outbox
from reinstatement.models import Notice
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import create_platform, upgrade_pipeline
from tests.smtp_server import RecordingHandler, ServerFactory
from tests.test_outbox import RENDERER, SENDER, restored, smtp_backend

pytestmark = pytest.mark.slow
NOTICES = 240
CONNECTIONS = 2


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class Cluster:
    """A PostgreSQL cluster of this test's own, run by the `postgres` user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="reinstate-pg-"))
        os.chmod(self.folder, 0o777)
        shutil.chown(self.folder, "postgres")
        self.data = self.folder / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, program: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / program), *args],
                       check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"),
                          "-o", f"-p {self.port} -k {self.folder} "
                          "-c listen_addresses=127.0.0.1", "-w", "-t", "60", *args)

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str) -> None:
        self._ctl("-m", mode, "restart")

    def stop(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("a private PostgreSQL cluster needs PostgreSQL's binaries and root "
                        "(to run them as the postgres user)")
        pytest.skip("a private PostgreSQL cluster needs PostgreSQL's binaries and root")
    private = Cluster(bindir)
    private.start()
    try:
        yield private
    finally:
        private.stop()


def _sent(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Notice).where(
            Notice.state == "sent")).scalar_one())


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_mid_notify_sends_at_most_one_notice_twice_per_connection(
    cluster: Cluster, smtp_server: ServerFactory, mode: str
) -> None:
    # Each DATA takes a while: the sending lasts a few seconds, and the restart lands in it.
    mail = smtp_server(RecordingHandler(slow_data_seconds=0.01))
    engine = make_engine(cluster.url)
    try:
        create_platform(engine)
        upgrade_pipeline(engine)
        restored(engine, addressed=NOTICES, unaddressed=0)
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                outbox.send_batch(engine, smtp_backend(mail), RENDERER,
                                  NOTICES // CONNECTIONS, sender=SENDER,
                                  lease=timedelta(minutes=10))
            except Exception as exc:  # noqa: BLE001 - a batch may fail; the rest is resent
                errors.append(exc)

        senders = [threading.Thread(target=sender) for _ in range(CONNECTIONS)]
        for thread in senders:
            thread.start()
        deadline = time.monotonic() + 60
        while len(mail.handler.delivered) < NOTICES // 3:
            assert time.monotonic() < deadline, "the notices were not being sent"
            time.sleep(0.01)
        cluster.restart(mode)  # mid-way: each connection has a notice in flight
        # Other senders claim, again and again, what they may (the nightly reconciliation,
        # a sibling batch, a task's retry): the claims' holds went with the restart, and a
        # sender must take its hold again before it sends another notice of its claim.
        def claim_again_and_again() -> None:
            until = time.monotonic() + 8
            while time.monotonic() < until:
                try:
                    outbox.send_batch(engine, smtp_backend(mail), RENDERER, 2, sender=SENDER,
                                      lease=timedelta(minutes=10))
                except Exception as exc:  # noqa: BLE001 - counted like the others'
                    errors.append(exc)
                time.sleep(0.002)

        late = threading.Thread(target=claim_again_and_again)
        late.start()
        for thread in [*senders, late]:
            thread.join(timeout=300)
        # What is left goes out as the nightly reconciliation sends it.
        mail.handler.slow_data_seconds = 0.0
        for _ in range(20):
            if not outbox.send_batch(engine, smtp_backend(mail), RENDERER, NOTICES,
                                     sender=SENDER, lease=timedelta(minutes=10)).claimed:
                break
        deliveries = Counter(d.message_id for d in mail.handler.delivered)
        twice = {message_id: n for message_id, n in deliveries.items() if n > 1}
        assert len(deliveries) == NOTICES and _sent(engine) == NOTICES
        # One notice in flight per connection sending when the server went away.
        assert len(twice) <= CONNECTIONS and set(twice.values()) <= {2}, (twice, errors)
    finally:
        engine.dispose()
