"""Fault detection behind `reinstate detect` and the nightly: the rule versions whose bans
look like a fault, and why. This module is its database side: the one read of the ban log
(`detect`) and the nightly's record of suspects (`record`, `mark_alerted`).

The method (docs/detection.md says more, with the figures it was tuned on):

1. **Counts, in one set-based statement.** For every rules-engine ban created in the
   analysed range (the range asked for, and `history_days` before it for baselines), the
   database groups by rule version and hour: bans, bans a moderator reversed, and bans of
   accounts with no earlier enforcement (`load_counts`, here).
2. **A Poisson model of each rule's hourly counts**, each version at a level of its own
   and the rule's daily and weekly rhythm fitted across them (`detection_model.py`).
3. to 6. **A baseline for each version, a Poisson CUSUM against it, the
   maximum-likelihood window of an alarm, and moderators' reversals beside the rate**
   (`detection_suspects.py`, whose `analyse` is pure: the reference the tests and the
   benchmark read). Each suspect carries a draft incident's declaration; it never
   restores anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, case, exists, func, insert, select, update

from reinstatement.detection_model import Counts, VersionRow
from reinstatement.detection_suspects import DetectionSettings, Suspect, analyse
from reinstatement.models import Suspect as SuspectRow
from reinstatement.platform_schema import enforcement_actions, rule_versions
from reinstatement.retrying import in_transaction
from reinstatement.store.engine import epoch_hour

# -- 1. counts -----------------------------------------------------------------------------

def load_counts(conn: Connection, lo: datetime, hi: datetime) -> Counts:
    """Hourly counts per rule version of the rules-engine bans created in [lo, hi)."""
    ban = enforcement_actions.alias("ban")
    reversal = enforcement_actions.alias("reversal")
    earlier = enforcement_actions.alias("earlier")
    hour = epoch_hour(ban.c.created_at)
    enforced_before = exists().where(earlier.c.account_id == ban.c.account_id,
                                     earlier.c.kind == "ban",
                                     earlier.c.created_at < ban.c.created_at)
    statement = (
        select(ban.c.rule_version_id, hour.label("hour"), func.count().label("bans"),
               func.sum(case((reversal.c.source == "moderator", 1), else_=0))
               .label("reversed"),
               func.sum(case((enforced_before, 0), else_=1)).label("first"))
        .select_from(ban.outerjoin(reversal, reversal.c.id == ban.c.reversed_by_action_id))
        .where(ban.c.kind == "ban", ban.c.source == "rule",
               ban.c.rule_version_id.is_not(None),
               ban.c.created_at >= lo, ban.c.created_at < hi)
        .group_by(ban.c.rule_version_id, hour)
    )
    counts: Counts = {}
    for row in conn.execute(statement):
        counts.setdefault(int(row.rule_version_id), {})[int(row.hour)] = [
            int(row.bans), int(row.reversed or 0), int(row.first or 0)]
    return counts


def load_versions(conn: Connection) -> list[VersionRow]:
    return [VersionRow(int(r.id), r.rule_name, int(r.version), r.status, r.deployed_at)
            for r in conn.execute(select(rule_versions.c.id, rule_versions.c.rule_name,
                                         rule_versions.c.version, rule_versions.c.status,
                                         rule_versions.c.deployed_at))]


# -- the one entry point ------------------------------------------------------------------------

def detect(engine: Engine, since: datetime, until: datetime,
           settings: DetectionSettings | None = None) -> list[Suspect]:
    """Suspects whose window meets [since, until): one set-based read, then the model."""
    settings = settings or DetectionSettings()
    lo = since - timedelta(days=settings.history_days)
    with engine.connect() as conn:
        versions = load_versions(conn)
        counts = load_counts(conn, lo, until)
    return analyse(versions, counts, lo, until, since, until, settings)


# -- the nightly's record of suspects -------------------------------------------------------

def record(engine: Engine, suspects: Sequence[Suspect], now: datetime
           ) -> list[dict[str, Any]]:
    """Keep each suspect (one row per rule version: first seen once, newest window kept);
    return the suspects whose alert has not gone out yet, new ones among them, each as
    `Suspect.as_json` with `first_seen_at`."""
    def work(conn: Connection) -> list[dict[str, Any]]:
        ids = {f"{r.rule_name}@{r.version}": int(r.id) for r in conn.execute(
            select(rule_versions.c.id, rule_versions.c.rule_name, rule_versions.c.version))}
        for suspect in suspects:
            version_id = ids[suspect.version]
            values = {"version": suspect.version, "since": suspect.since,
                      "until": suspect.until, "bans": suspect.bans, "score": suspect.score,
                      "details": suspect.as_json(), "last_seen_at": now}
            row = conn.execute(select(SuspectRow.id).where(
                SuspectRow.rule_version_id == version_id).with_for_update()).first()
            if row is None:
                conn.execute(insert(SuspectRow).values(rule_version_id=version_id,
                                                       first_seen_at=now, **values))
            else:
                conn.execute(update(SuspectRow).where(SuspectRow.id == row.id)
                             .values(**values))
        return [{**r.details, "first_seen_at": r.first_seen_at.isoformat()}
                for r in conn.execute(select(SuspectRow.details, SuspectRow.first_seen_at)
                                      .where(SuspectRow.alerted_at.is_(None))
                                      .order_by(SuspectRow.id))]

    return in_transaction(engine, work)


def mark_alerted(engine: Engine, versions: Sequence[str], now: datetime) -> None:
    """The alerts of these suspects went out."""
    def work(conn: Connection) -> None:
        conn.execute(update(SuspectRow).where(SuspectRow.version.in_(list(versions)),
                                              SuspectRow.alerted_at.is_(None))
                     .values(alerted_at=now))

    if versions:
        in_transaction(engine, work)
