"""Notices that failed for good: counted by reason, said plainly, and queued again.

A notice fails for good when the mail server refused it permanently (a 5xx reply), when
a deferral outlasted its attempts, or when its address is one no mail system takes. A
run that leaves any such notice is not a success: it ends Failed with the count and the
reasons (`describe`). Once the cause is fixed (the mail server, its settings),
`requeue` makes them due again with the Message-IDs they were given, so a recipient's
mail client shows at most one notice even if an earlier attempt did arrive.

A reason is the mail server's reply code ("550"), or "not-sendable" for an address no
mail system takes. A filter names one reason, or a class of them: "5xx", "4xx".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, func, select, update

from reinstatement.audit import audit_incident
from reinstatement.errors import BadInput
from reinstatement.models import Incident, Notice
from reinstatement.states import NoticeState
from reinstatement.store import store_for
from reinstatement.store.engine import utcnow

NOT_SENDABLE = "not-sendable"
_REASON = re.compile(r"^([2-5][0-9]{2}|[2-5]xx|not-sendable)$")


def reason_of(code: int | None) -> str:
    """A failed notice's reason: its reply code, or not-sendable (no code)."""
    return NOT_SENDABLE if code is None else str(code)


def check_reason(reason: str | None) -> str | None:
    """The reason filter as given, or BadInput naming what a reason may be."""
    if reason is None:
        return None
    reason = reason.strip().lower()
    if not _REASON.match(reason):
        raise BadInput(f"reason: {reason!r} is not a reply code (550), a class of them "
                       f"(5xx, 4xx) or {NOT_SENDABLE}")
    return reason


def _matching(reason: str | None, since: datetime | None) -> list[ColumnElement[bool]]:
    """The conditions that pick failed notices of `reason`, failed at or after `since`."""
    code = Notice.last_error_code
    conditions: list[ColumnElement[bool]] = []
    if reason == NOT_SENDABLE:
        conditions.append(code.is_(None))
    elif reason is not None and reason.endswith("xx"):
        low = int(reason[0]) * 100
        conditions += [code >= low, code < low + 100]
    elif reason is not None:
        conditions.append(code == int(reason))
    if since is not None:
        conditions.append(Notice.updated_at >= since)
    return conditions


def by_reason(conn: Connection, incident_id: int | None = None) -> dict[str, int]:
    """How many notices failed for good, per reason (of one incident, or of all)."""
    query = (select(Notice.last_error_code, func.count())
             .where(Notice.state == NoticeState.FAILED)
             .group_by(Notice.last_error_code))
    if incident_id is not None:
        query = query.where(Notice.incident_id == incident_id)
    counts: dict[str, int] = {}
    for code, count in conn.execute(query):
        counts[reason_of(code)] = counts.get(reason_of(code), 0) + int(count)
    return dict(sorted(counts.items()))


def by_incident(conn: Connection) -> dict[str, dict[str, int]]:
    """Per incident key, its notices that failed for good, per reason (one statement)."""
    counts: dict[str, dict[str, int]] = {}
    for key, code, count in conn.execute(
        select(Incident.key, Notice.last_error_code, func.count())
        .join(Incident, Incident.id == Notice.incident_id)
        .where(Notice.state == NoticeState.FAILED)
        .group_by(Incident.key, Notice.last_error_code)
        .order_by(Incident.key)
    ):
        reasons = counts.setdefault(key, {})
        reasons[reason_of(code)] = reasons.get(reason_of(code), 0) + int(count)
    return {key: dict(sorted(reasons.items())) for key, reasons in counts.items()}


def describe(counts: dict[str, int]) -> str:
    """'3 notices failed for good (550: 2, not-sendable: 1)'."""
    total = sum(counts.values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    return f"{total} notice{'' if total == 1 else 's'} failed for good ({reasons})"


@dataclass(frozen=True)
class Requeued:
    notices: int
    case_ids: list[int]


def requeue(conn: Connection, incident_id: int, actor: str, *, reason: str | None = None,
            since: datetime | None = None) -> Requeued:
    """Make the incident's failed notices (those of `reason`, failed at or after `since`)
    due again, each keeping its Message-ID; one audit row says how many and why."""
    reason = check_reason(reason)
    ids = select(Notice.id, Notice.case_id).where(
        Notice.incident_id == incident_id, Notice.state == NoticeState.FAILED,
        *_matching(reason, since))
    rows = conn.execute(store_for(conn).locked(ids)).all()
    if not rows:
        return Requeued(0, [])
    now = utcnow()
    conn.execute(update(Notice).where(Notice.id.in_([row.id for row in rows])).values(
        state=NoticeState.PENDING, attempts=0, next_attempt_at=now, claim_token=None,
        updated_at=now))
    why = f"failed notices queued again: {len(rows)}"
    if reason is not None:
        why += f", reason {reason}"
    if since is not None:
        why += f", failed since {since.isoformat()}"
    audit_incident(conn, incident_id, None, "notices requeued", actor, why)
    return Requeued(len(rows), sorted(row.case_id for row in rows))
