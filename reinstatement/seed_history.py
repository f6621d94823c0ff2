"""Synthetic ban history for fault detection: healthy rules, healthy version changes, and
planted faults, written into an empty platform database.

    reinstate seed --scenario detection [--days 30] [--plant-fault RULE@V:FACTOR:HOURS]...

Six rules ban around the clock at their own rates, with a daily rhythm (quieter at
night), and some with a weekly one (busier at weekends, or on weekdays); one is quiet
(a ban every few hours). Every few days each rule ships a new version, and a healthy new
version bans at 0.85 to 1.2 times its predecessor's rate. A planted fault
`RULE@V:FACTOR:HOURS` makes version V of RULE ban FACTOR times its predecessor's rate
from its deployment until version V+1 replaces it HOURS later, at its predecessor's rate
again. Faulty bans mostly hit accounts with no earlier enforcement, and moderators
reverse more of them on appeal; the platform's `rule_versions` does not mark them
faulty (nobody knows yet: that is what `reinstate detect` is for).

Counts per hour are Poisson, drawn from `random.Random(seed)` as a Poisson process
(exponential gaps), so the same options write the same rows.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert

from reinstatement.errors import BadInput
from reinstatement.platform_schema import accounts, enforcement_actions, rule_versions
from reinstatement.seed.platform_rows import MODERATORS
from reinstatement.seed.writing import (
    ACCOUNT_COLUMNS,
    ACTION_COLUMNS,
    assert_platform_empty,
    copy_line,
)
from reinstatement.store import store_for
from reinstatement.store.bulk import analyze_tables, move_identities_past_ids

HISTORY_END = datetime(2025, 5, 2, tzinfo=UTC)  # fixed: the same options write the same rows


@dataclass(frozen=True)
class HistoryRule:
    name: str
    per_hour: float  # bans an hour at the rule's first version, before its rhythms
    daily: float  # 0: flat; 0.6: the quietest hour bans 40% as much as the busiest
    weekly: str  # "flat", "weekend" (1.8 times on Saturdays and Sundays) or "weekday"


HISTORY_RULES: tuple[HistoryRule, ...] = (
    HistoryRule("spam_links", 40.0, 0.5, "flat"),
    HistoryRule("fake_engagement", 25.0, 0.6, "weekend"),
    HistoryRule("scraper_bot", 15.0, 0.2, "flat"),
    HistoryRule("counterfeit_goods", 8.0, 0.4, "weekday"),
    HistoryRule("adult_content", 20.0, 0.7, "weekend"),
    HistoryRule("impersonation", 0.4, 0.3, "flat"),  # quiet: a ban every two or three hours
)
RULES_BY_NAME = {rule.name: rule for rule in HISTORY_RULES}
# `--scenario detection` without --plant-fault: a version banning 8 times its
# predecessor's rate for 4 days, and one 3 times for 2 days in a weekly-seasonal rule.
DEFAULT_FAULTS = ("spam_links@3:8:96", "fake_engagement@4:3:48")
_FAULT = re.compile(r"^([A-Za-z0-9_.-]+)@([0-9]{1,4}):([0-9]+(?:\.[0-9]+)?):([0-9]{1,5})$")


@dataclass(frozen=True)
class PlantedFault:
    rule: str
    version: int
    factor: float
    hours: int
    # Filled in by the generator: when the faulty version was deployed and replaced.
    since: datetime | None = None
    until: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.rule}@{self.version}"


def parse_fault(spec: str, days: int) -> PlantedFault:
    """`RULE@V:FACTOR:HOURS`; BadInput naming what is wrong."""
    match = _FAULT.match(spec.strip())
    if not match:
        raise BadInput(f"--plant-fault {spec!r}: expected RULE@V:FACTOR:HOURS, e.g. "
                       "spam_links@3:8:96")
    rule, version, factor, hours = (match.group(1), int(match.group(2)),
                                    float(match.group(3)), int(match.group(4)))
    if rule not in RULES_BY_NAME:
        raise BadInput(f"--plant-fault {spec!r}: no rule {rule!r} in the detection scenario "
                       f"(its rules: {', '.join(RULES_BY_NAME)})")
    if version < 2:
        raise BadInput(f"--plant-fault {spec!r}: the version must be 2 or later (a fault is "
                       "measured against the version before it)")
    if version > 12:
        raise BadInput(f"--plant-fault {spec!r}: the version must be at most 12")
    if not 1.0 <= factor <= 100.0:
        raise BadInput(f"--plant-fault {spec!r}: the factor must be between 1 and 100")
    if not 1 <= hours <= (days - 9) * 24:
        raise BadInput(f"--plant-fault {spec!r}: the hours must be between 1 and "
                       f"{(days - 9) * 24} for a history of {days} days")
    return PlantedFault(rule, version, factor, hours)


@dataclass(frozen=True)
class HistoryOptions:
    days: int = 30
    seed: int = 20250401
    faults: tuple[str, ...] = DEFAULT_FAULTS
    scale: float = 1.0  # multiplies every rule's rate (the benchmark's million bans)
    batch_rows: int = 50_000

    def __post_init__(self) -> None:
        if not 14 <= self.days <= 120:
            raise BadInput(f"--days must be between 14 and 120, not {self.days}")
        if not 0 < self.scale <= 200:
            raise BadInput(f"the scale must be above 0 and at most 200, not {self.scale}")

    @property
    def start(self) -> datetime:
        return HISTORY_END - timedelta(days=self.days)

    def planted(self) -> list[PlantedFault]:
        faults = [parse_fault(spec, self.days) for spec in self.faults]
        rules = [fault.rule for fault in faults]
        for rule in set(rules):
            if rules.count(rule) > 1:
                raise BadInput(f"--plant-fault: at most one fault per rule ({rule} has "
                               f"{rules.count(rule)})")
        return faults


@dataclass
class VersionPlan:
    rule: HistoryRule
    version: int
    deployed_at: datetime
    factor: float  # times the rule's first version's rate
    faulty: bool = False
    status: str = "retired"


@dataclass
class HistorySummary:
    accounts: int = 0
    bans: int = 0
    reversed: int = 0
    rule_versions: int = 0
    faults: list[PlantedFault] = field(default_factory=list)
    seconds: float = 0.0


def _season(rule: HistoryRule, at: datetime) -> float:
    """The rule's rhythm at this moment: mean 1 over a day (and a week)."""
    hour = at.hour + at.minute / 60
    daily = 1.0 + rule.daily * math.cos(2 * math.pi * (hour - 15) / 24)  # busiest at 15:00
    weekend = at.weekday() >= 5
    if rule.weekly == "weekend":
        weekly = (1.8 if weekend else 1.0) / (9.6 / 7)
    elif rule.weekly == "weekday":
        weekly = (1.0 if weekend else 1.4) / (9.0 / 7)
    else:
        weekly = 1.0
    return daily * weekly


def plan_versions(options: HistoryOptions, rng: random.Random,
                  faults: Sequence[PlantedFault]) -> tuple[list[VersionPlan],
                                                          list[PlantedFault]]:
    """Every rule's versions: when each was deployed and its rate, healthy or faulty."""
    start, end = options.start, HISTORY_END
    planted: list[PlantedFault] = []
    plans: list[VersionPlan] = []
    by_rule = {fault.rule: fault for fault in faults}
    for rule in HISTORY_RULES:
        # Version 1 went out well before the history begins.
        timeline = [VersionPlan(rule, 1, start - timedelta(days=40), 1.0)]

        def healthy_until(limit: datetime, tl: list[VersionPlan] = timeline,
                          rule: HistoryRule = rule) -> None:
            while True:
                gap = timedelta(hours=rng.uniform(4 * 24, 9 * 24))
                at = tl[-1].deployed_at + gap
                if at >= limit:
                    return
                previous = next(v.factor for v in reversed(tl) if not v.faulty)
                tl.append(VersionPlan(rule, tl[-1].version + 1, _minute(at, rng),
                                      previous * rng.uniform(0.85, 1.2)))

        fault = by_rule.get(rule.name)
        if fault is None:
            healthy_until(end)
        else:
            # The faulty version is deployed between day 8 and the end less its hours.
            earliest = start + timedelta(days=8)
            latest = end - timedelta(hours=fault.hours + 12)
            at = _minute(earliest + (latest - earliest) * rng.random(), rng)
            # Healthy versions 2 .. V-1 before it, at least two days apart.
            needed = fault.version - 2
            first = start + timedelta(days=1)
            span = (at - timedelta(days=2)) - first
            for i in range(needed):
                moment = first + span * ((i + rng.uniform(0.2, 0.8)) / max(needed, 1))
                timeline.append(VersionPlan(rule, i + 2, _minute(moment, rng),
                                            timeline[-1].factor * rng.uniform(0.85, 1.2)))
            base = timeline[-1].factor
            timeline.append(VersionPlan(rule, fault.version, at, base * fault.factor,
                                        faulty=True))
            replaced = at + timedelta(hours=fault.hours)
            timeline.append(VersionPlan(rule, fault.version + 1, replaced,
                                        base * rng.uniform(0.9, 1.1)))
            planted.append(PlantedFault(fault.rule, fault.version, fault.factor,
                                        fault.hours, since=at, until=replaced))
            healthy_until(end)
        timeline[-1].status = "active"
        plans.extend(timeline)
    return plans, planted


def _minute(at: datetime, rng: random.Random) -> datetime:
    """A deployment moment: a whole minute, anywhere in its hour."""
    return at.replace(minute=rng.randrange(60), second=0, microsecond=0)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count (a Poisson process's arrivals in unit time, by exponential gaps)."""
    if mean <= 0:
        return 0
    if mean > 500:  # the normal approximation, for the benchmark's busiest hours
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    count, total = 0, rng.expovariate(mean)
    while total < 1.0:
        count += 1
        total += rng.expovariate(mean)
    return count


@dataclass
class _Ban:
    at: datetime
    version_id: int
    faulty: bool
    rule: str


def _bans(options: HistoryOptions, rng: random.Random, plans: list[VersionPlan],
          ids: dict[tuple[str, int], int]) -> Iterator[_Ban]:
    """Every ban of the history, hour by hour, each rule's active version banning."""
    start, end = options.start, HISTORY_END
    by_rule: dict[str, list[VersionPlan]] = {}
    for plan in plans:
        by_rule.setdefault(plan.rule.name, []).append(plan)
    hour = start
    while hour < end:
        for rule in HISTORY_RULES:
            timeline = by_rule[rule.name]
            # The version(s) active in this hour, each for its share of the hour.
            for i, plan in enumerate(timeline):
                version_end = timeline[i + 1].deployed_at if i + 1 < len(timeline) else end
                lo, hi = max(plan.deployed_at, hour), min(version_end, hour + timedelta(hours=1))
                if hi <= lo:
                    continue
                share = (hi - lo) / timedelta(hours=1)
                mean = (rule.per_hour * options.scale * plan.factor * share
                        * _season(rule, lo + (hi - lo) / 2))
                version_id = ids[(rule.name, plan.version)]
                for _ in range(_poisson(rng, mean)):
                    yield _Ban(lo + (hi - lo) * rng.random(), version_id, plan.faulty,
                               rule.name)
        hour += timedelta(hours=1)


@dataclass
class _Written:
    """One ban of the history as rows: its account and its actions, in foreign-key order."""

    ban: _Ban
    account: tuple[Any, ...]
    actions: list[tuple[Any, ...]]
    repeat: bool  # the account had been banned before
    reversed: bool  # a moderator reversed this ban


def _rows(options: HistoryOptions, rng: random.Random, plans: list[VersionPlan],
          ids: dict[tuple[str, int], int]) -> Iterator[_Written]:
    account_id = action_id = 0
    for ban in _bans(options, rng, plans, ids):
        account_id += 1
        # Healthy versions ban repeat offenders a third of the time; a faulty one mostly
        # bans accounts nobody had ever enforced against, and more of its bans are
        # reversed on appeal.
        repeat = rng.random() < (0.05 if ban.faulty else 0.35)
        reversed_ = rng.random() < (0.12 if ban.faulty else 0.02)
        actions: list[tuple[Any, ...]] = []
        if repeat:
            old_at = ban.at - timedelta(days=rng.uniform(60, 700))
            action_id += 2
            actions.append((action_id - 1, account_id, "unban", "moderator", None,
                            rng.choice(MODERATORS), "Appeal granted", None,
                            old_at + timedelta(days=1), None, None))
            actions.append((action_id, account_id, "ban", "moderator", None,
                            rng.choice(MODERATORS), "Manual review", None, old_at,
                            old_at + timedelta(days=1), action_id - 1))
        status = "banned"
        unban_id = reversed_at = None
        if reversed_:
            action_id += 1
            unban_id, reversed_at = action_id, ban.at + timedelta(hours=rng.uniform(2, 72))
            actions.append((unban_id, account_id, "unban", "moderator", None,
                            rng.choice(MODERATORS), "Appeal granted", None, reversed_at, None,
                            None))
            status = "active"
        action_id += 1
        # Every version's condition is `RULE_score >= 0.85` but a faulty one's (0.2): its
        # bans mostly score below 0.85, and a preview reinstates them.
        score = rng.uniform(0.2, 0.84) if ban.faulty else rng.uniform(0.85, 1.0)
        actions.append((action_id, account_id, "ban", "rule", ban.version_id, "rules-engine",
                        "Automated enforcement", {f"{ban.rule}_score": round(score, 3)},
                        ban.at, reversed_at, unban_id))
        account = (account_id, f"member_{account_id}", None,
                   f"member_{account_id}@example.test", "en", status, reversed_at or ban.at)
        yield _Written(ban, account, actions, repeat, reversed_)


def _plan(options: HistoryOptions) -> tuple[random.Random, list[VersionPlan],
                                            list[PlantedFault], dict[tuple[str, int], int]]:
    rng = random.Random(options.seed)
    plans, planted = plan_versions(options, rng, options.planted())
    ids = {(p.rule.name, p.version): n for n, p in enumerate(plans, start=1)}
    return rng, plans, planted, ids


def version_rows(plans: Sequence[VersionPlan], ids: dict[tuple[str, int], int]
                 ) -> list[dict[str, Any]]:
    return [
        {"id": ids[(p.rule.name, p.version)], "rule_name": p.rule.name, "version": p.version,
         "status": p.status, "deployed_at": p.deployed_at,
         "condition": {"signal": f"{p.rule.name}_score", "op": ">=",
                       "value": 0.2 if p.faulty else 0.85}}
        for p in plans]


def history_in_memory(options: HistoryOptions) -> tuple[list[dict[str, Any]],
                                                        dict[int, dict[int, list[int]]],
                                                        list[PlantedFault]]:
    """What `seed_history` writes, as `reinstatement.detection` counts it, without a
    database: the rule versions, the hourly counts per version, the planted faults (for
    the detection benchmark's sweeps, which try thousands of histories)."""
    rng, plans, planted, ids = _plan(options)
    counts: dict[int, dict[int, list[int]]] = {}
    for written in _rows(options, rng, plans, ids):
        hour = int(written.ban.at.timestamp() // 3600)
        cell = counts.setdefault(written.ban.version_id, {}).setdefault(hour, [0, 0, 0])
        cell[0] += 1
        cell[1] += written.reversed
        cell[2] += not written.repeat
    return version_rows(plans, ids), counts, planted


def seed_history(engine: Engine, options: HistoryOptions) -> HistorySummary:
    """Write the history into an empty platform database, in one transaction."""
    started = time.perf_counter()
    rng, plans, planted, ids = _plan(options)
    summary = HistorySummary(faults=planted, rule_versions=len(plans))
    with engine.begin() as conn:
        assert_platform_empty(conn)
        conn.execute(insert(rule_versions), version_rows(plans, ids))
        writer = _Writer(conn, options.batch_rows)
        for written in _rows(options, rng, plans, ids):
            writer.accounts.append(written.account)
            writer.actions.extend(written.actions)
            summary.bans += 1
            summary.reversed += written.reversed
            writer.maybe_flush()
        writer.flush()
        summary.accounts = summary.bans
        move_identities_past_ids(conn, ("accounts", "rule_versions", "enforcement_actions"))
    analyze_tables(engine, ("accounts", "enforcement_actions", "rule_versions"))
    summary.seconds = time.perf_counter() - started
    return summary


class _Writer:
    """Accounts before their actions: COPY on PostgreSQL, batched INSERTs on SQLite."""

    def __init__(self, conn: Connection, batch_rows: int) -> None:
        self.conn = conn
        self.batch_rows = batch_rows
        self.accounts: list[tuple[Any, ...]] = []
        self.actions: list[tuple[Any, ...]] = []

    def maybe_flush(self) -> None:
        if len(self.actions) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        batches = ((accounts, ACCOUNT_COLUMNS, self.accounts),
                   (enforcement_actions, ACTION_COLUMNS, self.actions))
        if store_for(self.conn).bulk_copy:
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            for table, columns, rows in batches:
                if rows:
                    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
                                     ) as copy:
                        copy.write("".join(map(copy_line, rows)))
        else:
            for table, columns, rows in batches:
                if rows:
                    self.conn.execute(insert(table), [dict(zip(columns, row, strict=True))
                                                      for row in rows])
        self.accounts.clear()
        self.actions.clear()


def history_description(summary: HistorySummary, options: HistoryOptions) -> list[str]:
    """What the history holds, and the command that looks for its faults."""
    lines = [f"seeded a ban history of {options.days} days: {summary.bans:,} rules-engine "
             f"bans ({summary.reversed:,} reversed by moderators), {summary.accounts:,} "
             f"accounts, {summary.rule_versions} rule versions in {summary.seconds:.1f} s"]
    for fault in summary.faults:
        assert fault.since is not None and fault.until is not None
        lines.append(f"  planted fault: {fault.name} bans {fault.factor:g} times its "
                     f"predecessor's rate from {fault.since.isoformat()} to "
                     f"{fault.until.isoformat()}")
    lines.append(f"  look for them: reinstate detect --since {options.start.isoformat()} "
                 f"--until {HISTORY_END.isoformat()}")
    return lines
