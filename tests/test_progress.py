"""Progress you can watch: each step's progress card moves while the step runs, counts
cases or notices (not batches), and ends in a final value, also when the step fails or
the run is cancelled.

The first tests drive `Progress` alone (its card's calls to Prefect recorded, the work
left given by a function); the others run the flow under the Prefect test harness against
both databases and read the card back.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, func, select

import tasks.progress as progress_module
from reinstatement.models import Notice
from tasks.progress import Progress, progress_text

Update = tuple[float, float, str]  # (when, percent, text)


class Card:
    """A progress card's calls to Prefect, recorded with when each came."""

    def __init__(self) -> None:
        self.created: tuple[float, float, str] | None = None
        self.updates: list[Update] = []
        self.failing = 0  # the next N updates raise, as a server that is down would

    def create(self, key: str, progress: float, description: str,
               metadata: dict[str, str]) -> UUID:
        self.created = (time.monotonic(), progress, description)
        self.metadata = metadata
        return uuid4()

    def update(self, artifact_id: Any, progress: float, description: str | None = None) -> Any:
        if self.failing:
            self.failing -= 1
            raise ConnectionError("the Prefect server is down")
        self.updates.append((time.monotonic(), progress, description or ""))
        return artifact_id


@pytest.fixture
def card(monkeypatch: pytest.MonkeyPatch) -> Card:
    recorded = Card()
    monkeypatch.setattr(progress_module, "_create_progress", recorded.create)
    monkeypatch.setattr(progress_module, "update_progress_artifact", recorded.update)
    return recorded


class Work:
    """A step's work left, falling at `rate` a second from `total` (as notices commit)."""

    def __init__(self, total: int, rate: float) -> None:
        self.total, self.rate, self.started = total, rate, time.monotonic()
        self.reads = 0
        self.stopped_at: int | None = None

    def left(self) -> int:
        self.reads += 1
        if self.stopped_at is not None:
            return self.total - self.stopped_at
        return max(0, self.total - int(self.rate * (time.monotonic() - self.started)))


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_card_moves_with_the_work_committed_between_batches(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No batch ends, yet the card moves, at least every PROGRESS_SECONDS, and sooner when
    2% of the step goes faster than that: the pace seen so far sets the next reading."""
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 2.0)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", 0.1)
    work = Work(total=1000, rate=100.0)  # 2% (20) every 0.2 s
    progress = Progress("INC-1", "notify", 1000, remaining=work.left, pending_key="notify")
    time.sleep(1.6)
    progress.finish("the test ended it")
    running = [u for u in card.updates if "stopped" not in u[2]]
    # One reading at 0.1 s, then one per 2% (0.2 s): about 8. Without the 2% rule, one.
    assert len(running) >= 5, card.updates
    assert [p for _, p, _ in card.updates] == sorted(p for _, p, _ in card.updates)
    for _, percent, text in running:
        done = int(re.fullmatch(r"notify: ([\d,]+) of 1,000 notices handled", text)[1]
                   .replace(",", ""))  # type: ignore[index]
        assert percent == pytest.approx(done / 10)
    # At most one reading a PROGRESS_MIN_SECONDS: about 16 readings in 1.6 s.
    assert work.reads <= 1.6 / 0.1 + 3


def test_a_batch_end_moves_the_card_at_once_and_the_end_is_final(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 60.0)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", 60.0)
    left = [9866]
    progress = Progress("INC-1", "restore", 9866, remaining=lambda: left[0],
                        pending_key="restore")
    assert card.created is not None
    assert card.created[1:] == (0.0, "restore: 0 of 9,866 accounts restored")
    left[0] -= 5000
    progress.advance(5000)
    _wait_until(lambda: bool(card.updates))
    assert card.updates[-1][1:] == (pytest.approx(50.68, abs=0.01),
                                    "restore: 5,000 of 9,866 accounts restored")
    left[0] = 0
    progress.finish()
    assert card.updates[-1][1:] == (100.0, "restore: 9,866 of 9,866 done")
    progress.advance(1)  # nothing moves a finished card
    time.sleep(0.2)
    assert card.updates[-1][1:] == (100.0, "restore: 9,866 of 9,866 done")


def test_a_stopped_step_says_where_it_stopped_with_the_count_read_at_its_end(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final count is read when the step ends, not taken from the batches: notices
    sent by a batch that never returned are counted."""
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 60.0)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", 60.0)
    work = Work(total=9403, rate=0.0)
    progress = Progress("INC-1", "notify", 9403, remaining=work.left, pending_key="notify")
    progress.advance(2000)
    work.stopped_at = 3764
    progress.finish(progress_module.stopped_by(RuntimeError("a batch failed")))
    assert card.updates[-1][1:] == (
        pytest.approx(100 * 3764 / 9403),
        "notify: stopped at 3,764 of 9,403 notices handled: the step failed; the run's log "
        "says why")


def test_a_failing_card_update_never_fails_the_step(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 0.1)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", 0.1)
    card.failing = 3
    work = Work(total=100, rate=50.0)

    def unreadable_once() -> int:
        if work.reads == 2:
            work.reads += 1
            raise OSError("the database went away for a moment")
        return work.left()

    progress = Progress("INC-1", "verify", 100, remaining=unreadable_once, pending_key="verify")
    progress.advance(10)
    _wait_until(lambda: bool(card.updates))  # the server answers again: the card moves
    _wait_until(lambda: work.left() == 0)
    progress.finish()
    assert card.updates[-1][1:] == (100.0, "verify: 100 of 100 done")


def test_texts_name_what_each_step_counts() -> None:
    assert progress_text("notify", 3764, 9403) == "notify: 3,764 of 9,403 notices handled"
    assert progress_text("restore", 6000, 9866) == "restore: 6,000 of 9,866 accounts restored"
    assert progress_text("verify", 10, 20) == "verify: 10 of 20 cases judged"
    assert progress_text("settle", 10, 20) == "settle: 10 of 20 cases judged and settled"
    assert progress_text("notify", 0, 0) == "notify: nothing left to do"
    assert progress_text("notify", 9403, 9403, final=True, detail="9,403 sent") == (
        "notify: 9,403 of 9,403 done: 9,403 sent")


# -- the flow, under the Prefect test harness, on both databases -----------------------------

def _notify_cards(incident_key: str) -> list[Any]:
    """The notify step's progress cards, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tasks.artifacts import artifact_key

    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=[artifact_key(incident_key, "progress-notify")])),
            sort=ArtifactSort.CREATED_DESC))


def _notices(engine: Engine, *states: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Notice).where(
            Notice.state.in_(states))).scalar_one())


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Update]]:
    """Every creation and update of a progress card, with when it came, as sent."""
    updates: list[Update] = []
    real_create = progress_module._create_progress
    real_update = progress_module.update_progress_artifact
    lock = threading.Lock()

    def create(key: str, progress: float, description: str, metadata: dict[str, str]) -> UUID:
        with lock:
            updates.append((time.monotonic(), progress, description))
        return real_create(key, progress, description, metadata)

    def update(artifact_id: Any, progress: float, description: str | None = None) -> Any:
        with lock:
            updates.append((time.monotonic(), progress, description or ""))
        return real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(progress_module, "_create_progress", create)
    monkeypatch.setattr(progress_module, "update_progress_artifact", update)
    yield updates


def _smtp_env(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REINSTATE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("REINSTATE_SMTP_PORT", str(port))
    monkeypatch.setenv("REINSTATE_SMTP_CONNECTIONS", "1")
    monkeypatch.setenv("REINSTATE_NOTIFY_RETRY_WAIT_SECONDS", "0")


INTERVAL = 0.6  # PROGRESS_SECONDS, shortened
SLACK = 1.4  # a count statement and a call to Prefect's server on a busy machine


@pytest.mark.prefect
@pytest.mark.slow
def test_the_notify_card_moves_notice_by_notice_against_a_slow_mail_server(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, smtp_server: Any, recorded: list[Update],
) -> None:
    """One batch holds every notice (one connection, the default batch size), sent at
    about 20 a second for about 6 s: the card reads the notices handled while the batch
    sends, every INTERVAL, never goes back, and ends at 100% with its final text."""
    from flows.reinstate_incident import reinstate_incident
    from reinstatement.seed import SeedOptions, seed
    from tests.factories import seeded_incident_request
    from tests.smtp_server import RecordingHandler

    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", INTERVAL)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", INTERVAL)  # a reading an interval
    seed(engine, SeedOptions(accounts=300, seed=6))
    server = smtp_server(RecordingHandler(slow_data_seconds=0.04))
    _smtp_env(monkeypatch, server.port)
    report = reinstate_incident(seeded_incident_request(batch_size=5000))
    sent = report["notices"].get("sent", 0)
    assert sent >= 60 and sent == len(server.handler.delivered) == _notices(engine, "sent")

    notify = [u for u in recorded if u[2].startswith("notify:")]
    assert notify[0][1:] == (0.0, f"notify: 0 of {sent:,} notices handled")
    assert notify[-1][1:] == (100.0, f"notify: {sent:,} of {sent:,} done: {sent:,} sent, "
                                     "0 to retry, 0 failed")
    gaps = [later[0] - earlier[0] for earlier, later in zip(notify, notify[1:], strict=False)]
    assert max(gaps) <= INTERVAL + SLACK, gaps
    assert [p for _, p, _ in notify] == sorted(p for _, p, _ in notify)
    counts = [int(m[1].replace(",", "")) for _, _, text in notify[1:-1]
              if (m := re.fullmatch(rf"notify: ([\d,]+) of {sent:,} notices handled", text))]
    assert len(counts) == len(notify) - 2, notify  # every update in between says so
    # Notices, not batches: one batch, yet the card went through many values in between.
    assert len({c for c in counts if 0 < c < sent}) >= 4, counts
    assert counts == sorted(counts)
    (card, *_) = _notify_cards(report["incident"])
    assert (card.data, card.description) == (100.0, notify[-1][2])


@pytest.mark.prefect
def test_a_failed_notify_step_ends_its_card_at_the_notices_it_handled(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mail backend breaks after 25 notices: the step fails, and its card says where
    it stopped, with the count the database holds (notices of a batch that never
    returned included)."""
    from flows.reinstate_incident import reinstate_incident
    from reinstatement.notices.backends.files import FileBackend
    from reinstatement.seed import SeedOptions, seed
    from tests.factories import seeded_incident_request

    seed(engine, SeedOptions(accounts=300, seed=6))
    monkeypatch.setenv("REINSTATE_SMTP_CONNECTIONS", "1")
    real_send = FileBackend.send
    calls = [0]

    def breaking_send(self: FileBackend, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 25:
            raise RuntimeError("the disk is full")
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(FileBackend, "send", breaking_send)
    with pytest.raises(Exception, match="batches failed"):
        reinstate_incident(seeded_incident_request(batch_size=5000))
    sent = _notices(engine, "sent")
    total = sent + _notices(engine, "pending", "sending", "retry")
    assert sent == 25 and total > sent
    (card, *_) = _notify_cards(seeded_incident_request().incident_key)
    assert card.description == (f"notify: stopped at {sent:,} of {total:,} notices handled: "
                                "the step failed; the run's log says why")
    assert card.data == pytest.approx(100 * sent / total)


@pytest.mark.prefect
def test_a_cancelled_run_leaves_no_card_mid_way(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose process was stopped before its step could finish its card (Cancel in
    the UI: the runner ends the process, then runs the run's on-cancellation hook in its
    own): the hook finishes the card with the count the database holds now."""
    from prefect import flow
    from prefect.runtime import flow_run as this_run

    from flows.batches import pending, step_progress
    from reinstatement.incidents import load_incident
    from reinstatement.resources import resources
    from reinstatement.runner import run_without_prefect
    from reinstatement.seed import SeedOptions, seed
    from tests.factories import seeded_incident_request

    seed(engine, SeedOptions(accounts=300, seed=6))
    request = seeded_incident_request()
    run_without_prefect(engine, request)  # restored, its notices queued
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 60.0)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_SECONDS", 60.0)

    cards: list[Progress] = []

    @flow(name="a-notify-step-cut-short")
    def cut_short(request: Any) -> tuple[str, int]:
        with resources().engine.connect() as conn:
            incident = load_incident(conn, request.incident_key)
        total = pending(incident, 100, "notify")
        # The step's card, then its process ends without a word (no finish).
        cards.append(step_progress(incident, 100, "notify", "notify", total))
        return str(this_run.get_id()), total

    try:
        _cut_short_and_cancelled(engine, cut_short, request)
    finally:
        for card in cards:  # its watcher thread, which the stopped process took with it
            card.finish()


def _cut_short_and_cancelled(engine: Engine, cut_short: Any, request: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling
    from sqlalchemy import update

    from flows.run_state import on_cancelled

    flow_run_id, total = cut_short(request)
    with engine.begin() as conn:  # what the sender had done before it was stopped
        ids = list(conn.execute(select(Notice.id).where(Notice.state == "pending")
                                .order_by(Notice.id).limit(37)).scalars())
        conn.execute(update(Notice).where(Notice.id.in_(ids)).values(state="sent"))
    (card, *_) = _notify_cards(request.incident_key)
    assert card.description == f"notify: 0 of {total:,} notices handled"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    on_cancelled(cut_short, run, Cancelling())
    (card, *_) = _notify_cards(request.incident_key)
    assert card.description == (f"notify: stopped at 37 of {total:,} notices handled: "
                                "the run was cancelled")
    assert card.data == pytest.approx(100 * 37 / total)
