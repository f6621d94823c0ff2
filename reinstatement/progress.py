"""A progress bar for long runs started from the command line.

The flow runs in the foreground; this watcher reads the case counts from the database
once a second on a background thread and draws them on stderr, so the bar knows nothing
of Prefect and costs the run nothing.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType

from sqlalchemy import Engine, func, select

from reinstatement.models import Case, Incident, Notice

SETTLED_STATES = ("closed", "review", "restored")


class ProgressWatcher:
    def __init__(self, engine: Engine, incident_key: str, interval: float = 1.0) -> None:
        self.engine = engine
        self.incident_key = incident_key
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="progress", daemon=True)
        self._shown = False
        self.enabled = sys.stderr.isatty()

    def __enter__(self) -> ProgressWatcher:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._shown:
            sys.stderr.write("\n")

    def _counts(self) -> tuple[int, int, int, int]:
        with self.engine.connect() as conn:
            incident_id = conn.execute(
                select(Incident.id).where(Incident.key == self.incident_key)
            ).scalar_one_or_none()
            if incident_id is None:
                return 0, 0, 0, 0
            total = conn.execute(select(func.count()).where(Case.incident_id == incident_id)
                                 ).scalar_one()
            settled = conn.execute(select(func.count()).where(
                Case.incident_id == incident_id, Case.state.in_(SETTLED_STATES))).scalar_one()
            notices = conn.execute(select(func.count()).where(
                Notice.incident_id == incident_id)).scalar_one()
            sent = conn.execute(select(func.count()).where(
                Notice.incident_id == incident_id,
                Notice.state.in_(("sent", "failed")))).scalar_one()
            return total, settled, notices, sent

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                total, settled, notices, sent = self._counts()
            except Exception:  # noqa: BLE001 - a progress bar must never break a run
                continue
            if not total:
                continue
            width = 30
            filled = int(width * settled / total)
            line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {settled:,}/{total:,} cases"
                    f" settled, {sent:,}/{notices:,} notices done")
            sys.stderr.write(line)
            sys.stderr.flush()
            self._shown = True
