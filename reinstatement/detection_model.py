"""Fault detection's model of a rule's hourly bans (plain Python: no database).

The expected bans of version v in hour t are `level[v] * day[hour of day] * week[day of
week] * exposure[t]`, where exposure is the share of the hour v was deployed. Levels and
the rule's daily and weekly rhythm are the maximum-likelihood fit of that log-linear model
(iterative proportional fitting, the rhythm shrunk towards flat where counts are few). Each
version has its own level, so a faulty version's excess does not leak into the rhythm.

`reinstatement/detection.py` reads the hourly counts this model is fitted to;
`detection_suspects.py` judges each version against the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

HOUR = 3600


@dataclass
class VersionRow:
    id: int
    rule_name: str
    version: int
    status: str
    deployed_at: datetime

    @property
    def name(self) -> str:
        return f"{self.rule_name}@{self.version}"


# Per rule version: epoch hour -> [bans, reversed by a moderator, first enforcement]
Counts = dict[int, dict[int, list[int]]]


def epoch(at: datetime) -> float:
    return at.timestamp()


def hour_start(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * HOUR, UTC)


def _hour_of_day(hour: int) -> int:
    return hour % 24


def _day_of_week(hour: int) -> int:
    return (hour // 24 + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0


@dataclass
class Segment:
    """A version's deployed hours within the analysed range."""

    version: VersionRow
    start: float  # epoch seconds
    end: float
    hours: list[int] = field(default_factory=list)
    exposure: list[float] = field(default_factory=list)
    bans: list[int] = field(default_factory=list)
    reversed: list[int] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    level: float = 0.0
    deployed: bool = False  # the segment starts at the version's deployment
    replaced: bool = False  # ... and ends where the next version replaced it

    @property
    def total(self) -> int:
        return sum(self.bans)


def rule_segments(versions: Sequence[VersionRow], counts: Counts, lo: float, hi: float
                  ) -> list[Segment]:
    """One rule's versions in deployment order, each with its hours in [lo, hi)."""
    ordered = sorted(versions, key=lambda v: (v.deployed_at, v.version))
    segments = []
    for i, version in enumerate(ordered):
        start = max(epoch(version.deployed_at), lo)
        end = hi if i + 1 == len(ordered) else min(epoch(ordered[i + 1].deployed_at), hi)
        if end <= start:
            continue
        segment = Segment(version, start, end,
                          deployed=start == epoch(version.deployed_at),
                          replaced=i + 1 < len(ordered) and end < hi)
        by_hour = counts.get(version.id, {})
        for hour in range(int(start // HOUR), math.ceil(end / HOUR)):
            share = (min(end, (hour + 1) * HOUR) - max(start, hour * HOUR)) / HOUR
            if share <= 0:
                continue
            bans, reversed_, first = by_hour.get(hour, (0, 0, 0))
            segment.hours.append(hour)
            segment.exposure.append(share)
            segment.bans.append(bans)
            segment.reversed.append(reversed_)
            segment.first.append(first)
        segments.append(segment)
    return segments


@dataclass
class Rhythm:
    day: list[float]
    week: list[float]

    def at(self, hour: int) -> float:
        return self.day[_hour_of_day(hour)] * self.week[_day_of_week(hour)]


def fit_rhythm(segments: Sequence[Segment], prior: float, iterations: int = 8) -> Rhythm:
    """Levels per version and the rule's daily and weekly rhythm: the Poisson
    maximum-likelihood fit of the log-linear model, by iterative proportional fitting.
    Sets each segment's `level` (bans an hour at a rhythm of 1)."""
    rhythm = Rhythm([1.0] * 24, [1.0] * 7)
    for _ in range(iterations):
        for s in segments:
            weight = sum(e * rhythm.at(h) for h, e in zip(s.hours, s.exposure, strict=True))
            s.level = s.total / weight if weight > 0 else 0.0
        for factors, key in ((rhythm.day, _hour_of_day), (rhythm.week, _day_of_week)):
            observed = [0.0] * len(factors)
            expected = [0.0] * len(factors)
            for s in segments:
                for h, e, x in zip(s.hours, s.exposure, s.bans, strict=True):
                    k = key(h)
                    observed[k] += x
                    expected[k] += s.level * e * rhythm.at(h) / factors[k]
            # Shrunk towards 1 by `prior` pseudo-bans: a quiet rule's rhythm stays flat.
            raw = [(o + prior) / (m + prior) for o, m in zip(observed, expected, strict=True)]
            mean = sum(raw) / len(raw)
            factors[:] = [r / mean for r in raw]
    return rhythm

