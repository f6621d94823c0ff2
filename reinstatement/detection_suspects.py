"""Fault detection's judgement: which rule versions are suspects, over what window, and
why (plain Python: no database).

Each rule's versions are fitted to the model of `detection_model.py`, then, version by
version (steps 3 to 6 of the method in `reinstatement/detection.py`):

3. **A baseline for each version:** the level of the versions of the same rule before
   it (the nearest ones, pooled up to `baseline_hours` of exposure and `baseline_bans`),
   leaving out any found or marked faulty; a rule's first version (or one with no such
   predecessor in the range) is measured against its own first hours instead (at least
   `own_baseline_hours`, more until they hold `baseline_bans`).
4. **A Poisson CUSUM** over the version's hours, for the change from `tolerance` times
   the baseline (a healthy version may ban somewhat more: up to 1.2 times is common) to
   `alternative` times it. It raises an alarm when the log-likelihood ratio passes
   `threshold` nats.
5. **The window** of an alarm is the maximum-likelihood epidemic change-point around the
   CUSUM's excursion: the hours [a, b] (searched a day either side) for which a rate of
   its own inside and the baseline's outside fit best, clipped to the version's
   deployment. The score is the log-likelihood ratio, in nats, of the window's bans
   against `tolerance` times the baseline: how far beyond the most a healthy version
   bans.
6. **Beside the rate**, the share of the version's bans that moderators reversed, and the
   share of its banned accounts with no earlier enforcement, against the baseline's: a
   version whose reversals are at least twice its baseline's share (binomial
   log-likelihood ratio above `threshold`, at least `min_reversals`) is a suspect too,
   even at a normal rate.

A suspect never restores anything: it carries a draft incident's declaration (the
version, its corrected version where the platform has one, the window), which an
operator previews with `reinstate run KEY <declaration> --dry-run` and approves as any
other incident once the rules team has marked the version faulty.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reinstatement.detection_model import (
    HOUR,
    Counts,
    Rhythm,
    Segment,
    VersionRow,
    epoch,
    fit_rhythm,
    hour_start,
    rule_segments,
)


@dataclass(frozen=True)
class DetectionSettings:
    tolerance: float = 1.4  # the CUSUM's null: up to this many times the baseline is healthy
    alternative: float = 2.5  # the CUSUM's alternative: the fault it is tuned to find fastest
    threshold: float = 12.0  # nats: the alarm, and the least score a suspect has
    min_bans: int = 20  # a suspect's window holds at least this many bans
    history_days: int = 28  # analysed before the range, for baselines and rhythms
    baseline_hours: float = 72.0  # predecessors' exposure pooled into a baseline
    own_baseline_hours: int = 24  # a version with no predecessor: its own first hours
    baseline_bans: int = 30  # a baseline holds at least this many bans (quiet rules: more
    #                          hours), or there is none
    reversal_ratio: float = 2.0  # reversals at this many times the baseline's share
    min_reversals: int = 10
    rhythm_prior: float = 20.0  # pseudo-bans shrinking each rhythm factor towards 1
    search_hours: int = 24  # how far either side of the excursion the window is searched
    snap_nats: float = 3.0  # an edge this close in fit to a deployment is put there


@dataclass
class Suspect:
    version: str
    rule_name: str
    status: str  # the platform's status of the version
    since: datetime
    until: datetime
    bans: int
    rate: float  # bans an hour in the window
    baseline_rate: float  # the bans an hour the baseline expected over the same hours
    score: float  # log-likelihood ratio, nats
    baseline: str  # which versions the baseline came from
    reasons: list[str]
    reversed_share: float
    baseline_reversed_share: float | None
    first_enforcement_share: float
    baseline_first_enforcement_share: float | None
    corrected: str | None  # the corrected version a declaration names, if the platform has one
    key: str = ""
    declaration: str = ""

    def as_json(self) -> dict[str, Any]:
        def iso(at: datetime) -> str:
            return at.astimezone(UTC).isoformat().replace("+00:00", "Z")

        def share(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "version": self.version, "platform_status": self.status,
            "since": iso(self.since), "until": iso(self.until), "bans": self.bans,
            "rate": round(self.rate, 3), "baseline_rate": round(self.baseline_rate, 3),
            "score": round(self.score, 2), "score_unit": "nats (log-likelihood ratio)",
            "baseline": self.baseline, "reasons": self.reasons,
            "reversed_share": share(self.reversed_share),
            "baseline_reversed_share": share(self.baseline_reversed_share),
            "first_enforcement_share": share(self.first_enforcement_share),
            "baseline_first_enforcement_share": share(self.baseline_first_enforcement_share),
            "corrected": self.corrected, "key": self.key, "declaration": self.declaration,
            "preview": f"reinstate run {self.key} {self.declaration} --dry-run",
        }


def _llr(observed: float, expected: float) -> float:
    """Poisson log-likelihood ratio of `observed` against a mean of `expected` (0 when
    observed is not above it)."""
    if observed <= expected or expected <= 0:
        return 0.0
    return observed * math.log(observed / expected) - (observed - expected)


def _binomial_llr(hits: int, trials: int, p0: float) -> float:
    if trials == 0 or p0 <= 0 or p0 >= 1:
        return 0.0
    p = hits / trials
    if p <= p0:
        return 0.0
    value = hits * math.log(p / p0)
    if hits < trials:
        value += (trials - hits) * math.log((1 - p) / (1 - p0))
    return value


@dataclass
class _Baseline:
    level: float
    description: str
    start_index: int  # the first hour of the segment the CUSUM reads
    bans: int
    reversed: int
    first: int


def _baseline(segment: Segment, earlier: Sequence[Segment], rhythm: Rhythm,
              settings: DetectionSettings) -> _Baseline | None:
    """The nearest healthy predecessors pooled, else the version's own first hours."""
    pooled: list[Segment] = []
    exposure, bans = 0.0, 0
    for previous in reversed(earlier):
        pooled.append(previous)
        exposure += sum(previous.exposure)
        bans += previous.total
        if exposure >= settings.baseline_hours and bans >= settings.baseline_bans:
            break
    if exposure >= settings.own_baseline_hours and bans >= settings.baseline_bans:
        expected = sum(e * rhythm.at(h) for s in pooled
                       for h, e in zip(s.hours, s.exposure, strict=True))
        total = sum(s.total for s in pooled)
        if expected > 0 and total > 0:
            return _Baseline(total / expected,
                             ", ".join(s.version.name for s in reversed(pooled)), 0, total,
                             sum(sum(s.reversed) for s in pooled),
                             sum(sum(s.first) for s in pooled))
    # Its own first hours (as many as hold `baseline_bans`, at most half its hours): a
    # fault from the deployment on cannot be seen this way.
    covered, index, bans = 0.0, 0, 0
    while index < len(segment.hours) // 2 and (covered < settings.own_baseline_hours
                                               or bans < settings.baseline_bans):
        covered += segment.exposure[index]
        bans += segment.bans[index]
        index += 1
    if covered < settings.own_baseline_hours or bans < settings.baseline_bans:
        return None
    expected = sum(segment.exposure[i] * rhythm.at(segment.hours[i]) for i in range(index))
    total = sum(segment.bans[:index])
    if expected <= 0 or total <= 0:
        return None
    return _Baseline(total / expected,
                     f"{segment.version.name}'s own first {covered:.0f} hours",
                     index, total, sum(segment.reversed[:index]), sum(segment.first[:index]))


def _rate_alarm(segment: Segment, expected: list[float], start: int,
                settings: DetectionSettings,
                observe: Callable[[str, float], None] | None = None
                ) -> tuple[int, int, float] | None:
    """The CUSUM's strongest excursion, refined to the maximum-likelihood window:
    (first index, last index, score) or None. `observe` is told the version's highest
    CUSUM (the benchmark's margin below the threshold)."""
    k0, k1 = settings.tolerance, settings.alternative
    per_ban, per_expected = math.log(k1 / k0), k1 - k0
    cusum, excursion_start, best = 0.0, start, None
    excursions: list[tuple[int, int]] = []
    peak, peak_at, highest = 0.0, start, 0.0
    for i in range(start, len(segment.bans)):
        cusum = max(0.0, cusum + segment.bans[i] * per_ban - expected[i] * per_expected)
        highest = max(highest, cusum)
        if cusum > peak:
            peak, peak_at = cusum, i
        if cusum == 0.0:
            if peak >= settings.threshold:
                excursions.append((excursion_start, peak_at))
            excursion_start, peak = i + 1, 0.0
    if peak >= settings.threshold:
        excursions.append((excursion_start, peak_at))
    if observe is not None:
        observe(segment.version.name, highest)
    if not excursions:
        return None
    observed = [0.0]
    mean = [0.0]
    for i in range(len(segment.bans)):
        observed.append(observed[-1] + segment.bans[i])
        mean.append(mean[-1] + (expected[i] if i >= start else 0.0))
    reach = settings.search_hours
    for first_at, last_at in excursions:
        for a in range(max(start, first_at - reach), min(len(segment.bans), first_at + reach + 1)):
            for b in range(max(a, last_at - reach), min(len(segment.bans), last_at + reach + 1)):
                # The change-point model: the baseline's rate outside [a, b], a rate of
                # its own inside; its maximum-likelihood window.
                x, m = observed[b + 1] - observed[a], mean[b + 1] - mean[a]
                fit = _llr(x, m)
                if best is None or fit > best[2]:
                    best = (a, b, fit)
    if best is None:
        return None
    a, b, fit = best
    # A rule changes when a version is deployed: an edge whose maximum-likelihood place
    # fits hardly better (`snap_nats`) than the deployment's, or the replacement's, is
    # put there. It matters where bans are few an hour, and errs towards covering more
    # of the version's bans, the reading that protects users.
    last = len(segment.bans) - 1
    for snap_start in (True, False):
        edge_a = start if snap_start and segment.deployed and start == 0 else a
        edge_b = last if not snap_start and segment.replaced else b
        snapped = _llr(observed[edge_b + 1] - observed[edge_a],
                       mean[edge_b + 1] - mean[edge_a])
        if (edge_a, edge_b) != (a, b) and fit - snapped <= settings.snap_nats:
            a, b, fit = edge_a, edge_b, snapped
    # The score: the window's bans against the most a healthy version bans.
    return a, b, _llr(observed[b + 1] - observed[a], k0 * (mean[b + 1] - mean[a]))


def analyse(versions: Sequence[VersionRow], counts: Counts, lo: datetime, hi: datetime,
            since: datetime, until: datetime, settings: DetectionSettings | None = None,
            observe: Callable[[str, float], None] | None = None) -> list[Suspect]:
    """The suspects among `versions`, from hourly `counts` over [lo, hi): those whose
    window meets [since, until). Pure: the reference the tests and the benchmark read."""
    settings = settings or DetectionSettings()
    # The history starts where the platform's log of rules-engine bans does: hours before
    # the first ban of any rule hold no evidence of a rate (a log kept from a later date,
    # or a shorter history than asked for), so they are no baseline of zero.
    first_hour = min((min(hours) for hours in counts.values() if hours), default=None)
    if first_hour is not None:
        lo = max(lo, hour_start(first_hour))
    by_rule: dict[str, list[VersionRow]] = {}
    for version in versions:
        by_rule.setdefault(version.rule_name, []).append(version)
    suspects: list[Suspect] = []
    for rule_versions_ in by_rule.values():
        segments = rule_segments(rule_versions_, counts, epoch(lo), epoch(hi))
        if not any(s.total for s in segments):
            continue
        rhythm = fit_rhythm(segments, settings.rhythm_prior)
        healthy: list[Segment] = []
        for segment in segments:
            suspect = _judge(segment, healthy, rhythm, settings, observe)
            if suspect is not None and suspect.until > since and suspect.since < until:
                suspects.append(suspect)
            if suspect is None and segment.version.status != "faulty":
                healthy.append(segment)
    _add_declarations(suspects, versions)
    return sorted(suspects, key=lambda s: (-s.score, s.version))


def _judge(segment: Segment, healthy: Sequence[Segment], rhythm: Rhythm,
           settings: DetectionSettings, observe: Callable[[str, float], None] | None
           ) -> Suspect | None:
    baseline = _baseline(segment, healthy, rhythm, settings)
    if baseline is None:
        return None
    expected = [baseline.level * e * rhythm.at(h)
                for h, e in zip(segment.hours, segment.exposure, strict=True)]
    reasons: list[str] = []
    window = _rate_alarm(segment, expected, baseline.start_index, settings, observe)
    a, b = baseline.start_index, len(segment.bans) - 1
    score = 0.0
    if window is not None and window[2] >= settings.threshold:
        first_at, last_at, window_score = window
        bans = sum(segment.bans[first_at:last_at + 1])
        if bans >= settings.min_bans:
            a, b, score = first_at, last_at, window_score
            times = bans / max(sum(expected[a:b + 1]), 1e-9)
            reasons.append(f"banned {times:.1f} times its baseline's rate")
    base_share = (baseline.reversed + 1) / (baseline.bans + 2)
    whole = range(baseline.start_index, len(segment.bans))
    reversed_, total = (sum(segment.reversed[i] for i in whole),
                        sum(segment.bans[i] for i in whole))
    reversal_score = _binomial_llr(reversed_, total, min(0.99, base_share
                                                          * settings.reversal_ratio))
    if reversed_ >= settings.min_reversals and reversal_score >= settings.threshold:
        reasons.append(f"moderators reversed {reversed_ / total:.1%} of its bans, against "
                       f"{baseline.reversed / max(baseline.bans, 1):.1%} of its baseline's")
        if not score:
            score = reversal_score
    if not reasons:
        return None
    in_window = range(a, b + 1)
    bans = sum(segment.bans[i] for i in in_window)
    hours = sum(segment.exposure[i] for i in in_window)
    since = datetime.fromtimestamp(max(segment.start, segment.hours[a] * HOUR), UTC)
    until = datetime.fromtimestamp(min(segment.end, (segment.hours[b] + 1) * HOUR), UTC)
    first_share = sum(segment.first[i] for i in in_window) / max(bans, 1)
    base_first = baseline.first / baseline.bans if baseline.bans else None
    if base_first is not None and first_share > base_first + 0.1:
        reasons.append(f"{first_share:.0%} of the accounts it banned had no earlier "
                       f"enforcement, against {base_first:.0%} of its baseline's")
    return Suspect(
        version=segment.version.name, rule_name=segment.version.rule_name,
        status=segment.version.status, since=since, until=until, bans=bans,
        rate=bans / max(hours, 1e-9),
        baseline_rate=sum(expected[i] for i in in_window) / max(hours, 1e-9),
        score=score, baseline=baseline.description, reasons=reasons,
        reversed_share=sum(segment.reversed[i] for i in in_window) / max(bans, 1),
        baseline_reversed_share=(baseline.reversed / baseline.bans if baseline.bans
                                 else None),
        first_enforcement_share=first_share, baseline_first_enforcement_share=base_first,
        corrected=None)


def _add_declarations(suspects: Iterable[Suspect], versions: Sequence[VersionRow]) -> None:
    """Each suspect's draft incident: a key, and the `reinstate run` arguments declaring it
    (the corrected version: the newest active version of the rule newer than it)."""
    for suspect in suspects:
        number = int(suspect.version.rsplit("@", 1)[1])
        newer = [v for v in versions if v.rule_name == suspect.rule_name
                 and v.status == "active" and v.version > number]
        corrected = max(newer, key=lambda v: v.version, default=None)
        suspect.corrected = None if corrected is None else corrected.name
        faulty = suspect.version + ("" if corrected is None else f"={corrected.name}")
        suspect.key = (f"SUSPECT-{suspect.rule_name}-{number}-"
                       f"{suspect.since.astimezone(UTC):%Y%m%dT%H%M}Z")
        suspect.declaration = shlex.join([
            "--faulty", faulty, "--since", _iso(suspect.since), "--until", _iso(suspect.until)])


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")

