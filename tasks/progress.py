"""Each step's progress card: how much of its work is done, moving while the step runs
and ending in a final value."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    update_progress_artifact,
)

from tasks.artifacts import artifact_key

# How often a step's progress card is brought up to date while the step runs: its work is
# read at least every PROGRESS_SECONDS, or each time PROGRESS_SHARE of it is done at the
# pace seen so far, whichever comes first, but at most once every PROGRESS_MIN_SECONDS (one
# count statement and, when the count moved, one call to Prefect's server each time).
PROGRESS_SECONDS = 4.0
PROGRESS_SHARE = 0.02
PROGRESS_MIN_SECONDS = 1.0

# What each step's count counts, as its card says it.
STEP_WORK = {"verify": "cases judged", "settle": "cases judged and settled",
             "restore": "accounts restored", "notify": "notices handled"}


def progress_text(step: str, done: int, total: int, *, why: str | None = None,
                  final: bool = False, detail: str | None = None) -> str:
    """The line a step's progress card shows: while it runs, when it is done, and when it
    stopped before its work was (`why`)."""
    if not total:
        return f"{step}: nothing left to do"
    work = STEP_WORK.get(step, "done")
    if why is not None:
        return f"{step}: stopped at {done:,} of {total:,} {work}: {why}"
    if final:
        return f"{step}: {total:,} of {total:,} done" + (f": {detail}" if detail else "")
    return f"{step}: {done:,} of {total:,} {work}"


def stopped_by(exc: BaseException) -> str:
    """Why a step stopped, from what ended it, in the words of its progress card."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return "the run was stopped (cancelled, or its process ended)"
    if isinstance(exc, KeyboardInterrupt):
        return "the run was interrupted"
    return "the step failed; the run's log says why"


def _run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _create_progress(key: str, progress: float, description: str,
                     metadata: dict[str, str]) -> UUID:
    """A progress artifact of this flow (or task) run, with what a later process needs to
    finish it (`finish_progress_left_open`) in its metadata."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.utilities.context import get_task_and_flow_run_ids

    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    with get_client(sync_client=True) as client:
        return client.create_artifact(ArtifactCreate(
            type="progress", key=key, description=description, data=progress,
            metadata_=metadata, flow_run_id=flow_run_id, task_run_id=task_run_id)).id


class Progress:
    """A step's progress artifact: how much of the step's work is committed, while the
    step runs, and a final value when it ends (`finish`).

    A watcher thread reads the work not yet committed (`remaining`, one count statement)
    every PROGRESS_SECONDS, sooner when PROGRESS_SHARE of the step goes faster, and moves
    the card when the count moved; a batch's end (`advance`) moves it at once. Done is the
    count at the start less the count now: notices leave it one by one as they are sent,
    so the card moves within a batch. The calls to Prefect's server are the thread's, never
    the step's: a slow server delays no batch, and a failing call is logged, not raised.
    """

    def __init__(self, incident_key: str, step: str, total: int, *,
                 remaining: Callable[[], int] | None = None, pending_key: str = "",
                 incident: str | None = None) -> None:
        self.step = step
        self.total = max(total, 0)
        self._remaining = remaining
        self._logger = _run_logger()
        self._counts = threading.Lock()  # never held across a call out of this process
        self._publishing = threading.Lock()  # held across each update of the card
        self._wake = threading.Event()
        self._closed = self._finished = False
        self._batched = self._committed = self._shown = 0
        self._baseline: int | None = None
        self._watcher: threading.Thread | None = None
        self.artifact_id: UUID | None = None
        if self.total and remaining is not None:
            self._baseline = self._read()
        try:
            # A step with nothing left to do (a rerun after the resume, say) is done, not 0%.
            self.artifact_id = _create_progress(
                artifact_key(incident_key, f"progress-{step}"),
                0.0 if self.total else 100.0, progress_text(step, 0, self.total),
                {"incident": incident_key if incident is None else incident,
                 "step": step, "pending": pending_key, "total": str(self.total),
                 "start": "" if self._baseline is None else str(self._baseline)})
        except Exception as exc:  # noqa: BLE001 - a card is no reason to stop the step
            self._logger.warning("could not create the %s progress card: %s", step, exc)
        if self.artifact_id is not None and self._baseline is not None:
            context = contextvars.copy_context()  # Prefect's settings, client and run
            self._watcher = threading.Thread(target=context.run, args=(self._watch,),
                                             name=f"progress-{step}", daemon=True)
            self._watcher.start()

    @property
    def done(self) -> int:
        """What the card may say is done: never less than it said, never more than all."""
        with self._counts:
            return min(self.total, max(self._shown, self._batched, self._committed))

    def advance(self, cases: int) -> None:
        """A batch ended with `cases` cases (or notices) done: the card moves at once (in
        the watcher's thread; without one, here)."""
        with self._counts:
            self._batched += cases
        if self._watcher is not None:
            self._wake.set()
        else:
            self._publish_if_moved()

    def _read(self) -> int | None:
        """The step's work not yet committed, or None when it could not be read."""
        assert self._remaining is not None
        try:
            return self._remaining()
        except Exception as exc:  # noqa: BLE001 - the next reading may do; the step goes on
            self._logger.warning("could not read the %s step's progress: %s", self.step, exc)
            return None

    def _watch(self) -> None:
        pace = (time.monotonic(), 0)  # when, and what was committed, at the last reading
        next_read = pace[0] + PROGRESS_MIN_SECONDS
        while not self._closed:
            if self._wake.wait(min(max(0.0, next_read - time.monotonic()), 3600.0)):
                self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            if now >= next_read:
                left = self._read()
                if left is not None and self._baseline is not None:
                    with self._counts:
                        self._committed = max(self._committed, self._baseline - left)
                        committed = self._committed
                    wait = PROGRESS_SECONDS
                    if committed > pace[1] and now > pace[0]:
                        rate = (committed - pace[1]) / (now - pace[0])
                        wait = min(wait, max(PROGRESS_MIN_SECONDS,
                                             PROGRESS_SHARE * self.total / rate))
                    pace = (now, committed)
                else:
                    wait = PROGRESS_SECONDS
                next_read = time.monotonic() + wait
                if left == 0:  # all of it committed: only batch ends and `finish` are left
                    next_read = float("inf")
            self._publish_if_moved()

    def _publish_if_moved(self) -> None:
        done = self.done
        if done > self._shown:
            self._publish(done, progress_text(self.step, done, self.total))

    def _publish(self, done: int, text: str, *, final: bool = False,
                 percent: float | None = None) -> None:
        with self._publishing:
            if self.artifact_id is None or (self._finished and not final):
                return
            try:
                update_progress_artifact(
                    self.artifact_id,
                    percent if percent is not None else 100.0 * done / max(self.total, 1),
                    description=text)
            except Exception as exc:  # noqa: BLE001 - a card is no reason to stop the step
                self._logger.warning("could not update the %s progress card: %s", self.step,
                                     exc)
                return
            with self._counts:
                self._shown = max(self._shown, done)

    def finish(self, why: str | None = None, detail: str | None = None) -> None:
        """The card's final value, from the work left now: done (100%), or, when work is
        left, stopped at the count done, with `why` (the step failed, the run was
        stopped, another run holds the rest). `detail`: what a finished step adds."""
        if self._finished:
            return
        self._finished = self._closed = True
        self._wake.set()
        if self.artifact_id is None or not self.total:
            return
        left = self._read() if self._remaining is not None else None
        with self._counts:
            counted = self._baseline is not None and left is not None
            if counted:
                assert self._baseline is not None and left is not None
                self._committed = self._baseline - left
            done = min(self.total, max(self._batched, self._committed, 0))
        if (counted and left == 0) or (not counted and why is None and done >= self.total):
            self._publish(self.total, progress_text(self.step, self.total, self.total,
                                                    final=True, detail=detail),
                          final=True, percent=100.0)
            return
        why = why or "another run holds the rest"
        if not counted:
            why += " (counted from the batches that ended: the database could not be read)"
        self._publish(done, progress_text(self.step, done, self.total, why=why),
                      final=True, percent=min(99.9, 100.0 * done / self.total))


def finish_progress_left_open(flow_run_id: UUID, why: str,
                              remaining: Callable[[str, str], int]) -> int:
    """Finish the progress cards a flow run left mid-way (its process stopped before its
    steps could, as a cancelled run's is): each with the true count, read now, and `why`.
    `remaining(incident, pending key)` counts a step's work left. Returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC)
    latest: dict[str, Any] = {}
    for card in cards:
        latest.setdefault(card.key or str(card.id), card)
    finished = 0
    for card in latest.values():
        meta = card.metadata_ or {}
        if not isinstance(card.data, (int, float)) or card.data >= 100 or not meta.get("start"):
            continue
        total, start = int(meta["total"]), int(meta["start"])
        left = remaining(meta.get("incident", ""), meta.get("pending", ""))
        done = total if left == 0 else min(total, max(start - left, 0))
        step = meta.get("step", "step")
        if left == 0:
            update_progress_artifact(card.id, 100.0, description=progress_text(
                step, total, total, final=True))
        else:
            update_progress_artifact(card.id, min(99.9, 100.0 * done / max(total, 1)),
                                     description=progress_text(step, done, total, why=why))
        finished += 1
    return finished
