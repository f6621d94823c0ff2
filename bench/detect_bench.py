"""Fault detection: its speed on a million bans, and where it stops finding faults.

    python -m bench.detect_bench speed [--bans 1000000] [--days 30] [--sqlite-only|--pg-only]
    python -m bench.detect_bench sweep [--seeds 10]
    python -m bench.detect_bench healthy [--seeds 100]

`speed` seeds the detection scenario (reinstatement/seed_history.py) scaled to about
`--bans` rules-engine bans over `--days` days into a fresh PostgreSQL database and a
fresh SQLite file, then times `reinstate detect`'s work over those days (one set-based
statement, then the model), twice each, and prints the better time and the peak RSS.

`sweep` plants one fault at a time (a factor of the predecessor's rate, for a number of
hours) in a flat rule (scraper_bot, 15 bans an hour) and in a weekly-seasonal one
(fake_engagement, 25 an hour, busier at weekends), over `--seeds` histories each, and
counts how many are found with their window within an hour of the truth at both ends,
with the rate alone and with the moderators' reversals too; and every suspect that is
not a planted fault (a false alarm) over all of them. It runs on the reference's own
counts (`history_in_memory`, the counts both databases are tested to give).

`healthy` measures the margin the threshold keeps: over `--seeds` histories with no
fault at all, every healthy version's strongest window is scored with the alarm
threshold set to nothing, and the highest scores are printed against the threshold.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from bench.pipeline_bench import DEFAULT_PG_URL, drop_database, recreate_database
from reinstatement import detection
from reinstatement.detection_model import VersionRow
from reinstatement.detection_suspects import DetectionSettings, Suspect, analyse
from reinstatement.seed_history import (
    HISTORY_END,
    HISTORY_RULES,
    HistoryOptions,
    history_in_memory,
    seed_history,
)
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import create_platform

BANS_AT_SCALE_1 = 101_000  # the scenario's six rules over 30 days at scale 1 (measured)


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def log(message: str) -> None:
    sys.stderr.write(f"[detect-bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def speed(args: argparse.Namespace) -> None:
    scale = args.bans / BANS_AT_SCALE_1 * 30 / args.days
    options = HistoryOptions(days=args.days, seed=args.seed, scale=scale)
    targets = []
    if not args.sqlite_only:
        targets.append(("PostgreSQL", recreate_database(args.pg_url, "reinstate_detect_bench")))
    folder = tempfile.mkdtemp(prefix="reinstate-detect-")
    if not args.pg_only:
        targets.append(("SQLite", f"sqlite:///{Path(folder) / 'platform.db'}"))
    out("| database | bans | seed s | detect s (best of 2) | suspects | peak RSS MB |")
    out("|---|---:|---:|---:|---|---:|")
    for name, url in targets:
        engine = make_engine(url)
        create_platform(engine)
        log(f"seeding about {args.bans:,} bans over {args.days} days into {name}")
        summary = seed_history(engine, options)
        times = []
        suspects: list[Suspect] = []
        for _ in range(2):
            started = time.perf_counter()
            suspects = detection.detect(engine, options.start, HISTORY_END)
            times.append(time.perf_counter() - started)
        engine.dispose()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        found = ", ".join(s.version for s in suspects)
        log(f"{name}: {summary.bans:,} bans, detect {times}")
        out(f"| {name} | {summary.bans:,} | {summary.seconds:.1f} | {min(times):.1f} | "
              f"{found} | {rss:.0f} |")
    if not args.sqlite_only:
        drop_database(args.pg_url, "reinstate_detect_bench")
    for file in Path(folder).glob("*"):
        file.unlink()
    os.rmdir(folder)


def sweep(args: argparse.Namespace) -> None:
    factors = [float(f) for f in args.factors.split(",")]
    durations = [int(h) for h in args.hours.split(",")]
    methods = {"the rate alone": replace(DetectionSettings(), reversal_ratio=1e9),
               "the rate and the reversals": DetectionSettings()}
    rules = {rule.name: rule for rule in HISTORY_RULES}
    false_alarms = dict.fromkeys(methods, 0)
    histories = 0
    out(f"{args.seeds} histories of {args.days} days per cell, at {args.scale:g} times "
          "the scenario's rates; each cell: found / found with its window within an hour "
          "of the truth at both ends\n")
    for rule_name in ("scraper_bot", "fake_engagement"):
        rule = rules[rule_name]
        per_hour = rule.per_hour * args.scale
        # results[method][(factor, hours)] = [found, within an hour]
        results: dict[str, dict[tuple[float, int], list[int]]] = {m: {} for m in methods}
        for factor in factors:
            for hours in durations:
                for method in methods:
                    results[method][(factor, hours)] = [0, 0]
                for seed in range(1, args.seeds + 1):
                    options = HistoryOptions(days=args.days, seed=seed, scale=args.scale,
                                             faults=(f"{rule_name}@3:{factor:g}:{hours}",))
                    rows, counts, planted = history_in_memory(options)
                    histories += 1
                    versions = [VersionRow(r["id"], r["rule_name"], r["version"],
                                           r["status"], r["deployed_at"])
                                for r in rows]
                    (fault,) = planted
                    assert fault.since is not None and fault.until is not None
                    for method, settings in methods.items():
                        lo = options.start - timedelta(days=settings.history_days)
                        suspects = analyse(versions, counts, lo, HISTORY_END,
                                           options.start, HISTORY_END, settings)
                        for suspect in suspects:
                            if suspect.version != fault.name:
                                false_alarms[method] += 1
                                continue
                            cell = results[method][(factor, hours)]
                            cell[0] += 1
                            if (abs(suspect.since - fault.since) <= timedelta(hours=1)
                                    and abs(suspect.until - fault.until)
                                    <= timedelta(hours=1)):
                                cell[1] += 1
        for method in methods:
            out(f"{rule_name} ({per_hour:g} bans an hour, {rule.weekly} week), "
                  f"{method}:\n")
            out("| factor | " + " | ".join(f"{h} h" for h in durations) + " |")
            out("|---:|" + "---:|" * len(durations))
            for factor in factors:
                out(f"| {factor:g} | " + " | ".join(
                    "{}/{}".format(*results[method][(factor, h)]) for h in durations) + " |")
            out()
            sys.stdout.flush()
    out(f"false alarms (a suspect that is not the planted fault) over {histories} histories "
          f"of {args.days} days, six rules each: " + ", ".join(
              f"{method} {count}" for method, count in false_alarms.items()))


def healthy(args: argparse.Namespace) -> None:
    """The margin below the alarm: every healthy version's highest CUSUM, and every
    reversal score, over histories with no fault at all, at the method's own settings."""
    settings = DetectionSettings()
    peaks: list[tuple[float, str]] = []
    suspects: list[str] = []
    for seed in range(1, args.seeds + 1):
        options = HistoryOptions(days=args.days, seed=seed, scale=args.scale, faults=())
        rows, counts, _ = history_in_memory(options)
        versions = [VersionRow(r["id"], r["rule_name"], r["version"], r["status"],
                               r["deployed_at"]) for r in rows]
        lo = options.start - timedelta(days=settings.history_days)
        found = analyse(
            versions, counts, lo, HISTORY_END, options.start, HISTORY_END, settings,
            observe=lambda version, peak, seed=seed: peaks.append((peak, f"{version} "
                                                                      f"(seed {seed})")))
        suspects += [f"{s.version} (seed {seed})" for s in found]
    peaks.sort(reverse=True)
    hours = args.seeds * args.days * 24
    out(f"{args.seeds} histories of {args.days} days with no fault ({len(peaks)} version "
        f"judgements, six rules, {hours:,} hours each rule): {len(suspects)} suspect(s) "
        f"{suspects}; the highest CUSUM of a healthy version "
        + ", ".join(f"{p:.1f} {where}" for p, where in peaks[:5])
        + f", against the alarm at {settings.threshold:g} nats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--bans", type=int, default=1_000_000)
    s.add_argument("--days", type=int, default=30)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL", DEFAULT_PG_URL))
    s.add_argument("--sqlite-only", action="store_true")
    s.add_argument("--pg-only", action="store_true")
    w = sub.add_parser("sweep")
    w.add_argument("--seeds", type=int, default=10)
    w.add_argument("--days", type=int, default=21)
    w.add_argument("--scale", type=float, default=0.5)
    w.add_argument("--factors", default="1.5,2,2.5,3,4,8")
    w.add_argument("--hours", default="3,6,12,24,48,96")
    h = sub.add_parser("healthy")
    h.add_argument("--seeds", type=int, default=100)
    h.add_argument("--days", type=int, default=21)
    h.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args(argv)
    {"speed": speed, "sweep": sweep, "healthy": healthy}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
