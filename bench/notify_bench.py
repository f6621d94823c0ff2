"""The outbox's send path alone: notices per second and CPU per notice, without Prefect.

Seeds N accounts on PostgreSQL (database `reinstate_notify_bench`, dropped at the end),
reinstates the seeded incident in this process (its notices queued, none sent), then
for each round copies that database and has P sender processes claim and send one batch
each (`outbox.send_batch`, as the notify step's sender processes do: a commit per notice
before the next send) into Postfix's `smtp-sink` or the file backend, all at once. It
prints the notices per second of the round (all sent / the slowest sender's wall time) and
each sender's own CPU per notice.

    .venv/bin/python -m bench.notify_bench --accounts 30000 --senders 2 --rounds 3

The figures move with whatever else the machine does. To compare two commits, run this
on each in turn, alternating, on the same machine: `bench/RESULTS.md` does so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.machine import CpuMark, cpu_mark, wait_for_backends
from bench.pipeline_bench import (
    DEFAULT_PG_URL,
    SMTP_SINK_HINT,
    drop_database,
    log,
    recreate_database,
    seeded_database,
    smtp_sink,
    smtp_sink_path,
)

NAME = "reinstate_notify_bench"
SENDER = "Trust & Safety <trust-and-safety@example.com>"
PROFILE_ENV = "REINSTATE_NOTIFY_BENCH_PROFILE"


def _sender(url: str, backend: str, target: str, limit: int) -> int:
    """One sender process's part: claim `limit` due notices and send them; prints its CPU."""
    from reinstatement import outbox
    from reinstatement.notices.backends import FileBackend, PipeliningSmtpBackend
    from reinstatement.notices.render import NoticeRenderer
    from reinstatement.store.engine import make_engine

    engine = make_engine(url)
    chosen = (PipeliningSmtpBackend("127.0.0.1", int(target), sender=SENDER) if backend == "smtp"
              else FileBackend(Path(target) / str(os.getpid())))
    profile_to = os.environ.get(PROFILE_ENV)
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu = time.process_time()
    result = outbox.send_batch(engine, chosen, NoticeRenderer(), limit, sender=SENDER,
                               lease=timedelta(minutes=30))
    used = time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(Path(profile_to) / f"sender-{os.getpid()}.prof"))
    sys.stdout.write(f"{result.sent} {used / max(1, result.sent) * 1e6:.0f}\n")
    engine.dispose()
    return 0 if result.sent else 1


def _round(url: str, backend: str, target: str, senders: int, each: int
           ) -> tuple[float, list[str], str]:
    """Notices per second, each sender's CPU per notice, and the machine's CPU per notice."""
    wait_for_backends()
    mark = cpu_mark()
    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-m", "bench.notify_bench", "--child", url,
                                  backend, target, str(each)], stdout=subprocess.PIPE)
                for _ in range(senders)]
    outputs = [child.communicate()[0].decode().split() for child in children]
    elapsed = time.perf_counter() - started
    if any(child.returncode for child in children):
        raise RuntimeError(f"a sender failed: {outputs}")
    sent = sum(int(out[0]) for out in outputs)
    return sent / elapsed, [out[1] for out in outputs], _machine_per_notice(mark, sent)


def _machine_per_notice(mark: CpuMark | None, sent: int) -> str:
    """The whole machine's busy CPU, and PostgreSQL's part, per notice sent since `mark`."""
    wait_for_backends()
    now = cpu_mark()
    if mark is None or now is None or not sent:
        return ""
    busy = (now.busy - mark.busy) / sent * 1e6
    database = (now.database - mark.database) / sent * 1e6
    return f"; the machine {busy:.0f} us a notice, of which PostgreSQL {database:.0f} us"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _sender(*argv[1:4], int(argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=30_000)
    parser.add_argument("--senders", type=int, default=2, help="sender processes at once")
    parser.add_argument("--each", type=int, default=5000, help="notices per sender a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("smtp", "file"), default="smtp")
    parser.add_argument("--pg-url", default=os.environ.get("REINSTATE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="profile each sender (cProfile) into DIR/sender-PID.prof and "
                             "print where the last round's first sender spent its time")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ[PROFILE_ENV] = str(args.profile)
    sink = smtp_sink_path()
    if args.backend == "smtp" and sink is None:
        sys.stderr.write(SMTP_SINK_HINT + "\n")
        return 2
    from reinstatement import outbox, runner
    from reinstatement.incident_request import build_request
    from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_KEY, INCIDENT_SINCE, INCIDENT_UNTIL
    from reinstatement.store.engine import make_engine

    url, _ = seeded_database(args.pg_url, NAME, args.accounts, 20250401)
    engine = make_engine(url)
    runner.run_without_prefect(engine, build_request(
        incident_key=INCIDENT_KEY, faulty_versions=list(INCIDENT_FAULTY),
        since=INCIDENT_SINCE, until=INCIDENT_UNTIL, batch_size=5000, require_approval=False))
    with engine.connect() as conn:
        queued = outbox.due_count(conn)
    engine.dispose()
    if queued < args.senders * args.each:
        drop_database(args.pg_url, NAME)
        sys.stderr.write(f"{args.accounts:,} accounts queue {queued:,} notices, fewer than "
                         f"--senders x --each = {args.senders * args.each:,}: give more "
                         "--accounts or a smaller --each\n")
        return 2
    copy = f"{NAME}_round"
    # Every round's files are kept until the end: a round writing its files just after the
    # last round's were deleted spent twice the CPU (ext4 passes over the inodes deleted in
    # the last 30 s before it reuses one), which no operator's outbox folder sees.
    folders = tempfile.TemporaryDirectory(prefix="reinstate-notify-bench-")
    try:
        for number in range(1, args.rounds + 1):
            round_url = recreate_database(args.pg_url, copy, template=NAME)
            if args.backend == "smtp":
                assert sink is not None
                with smtp_sink(sink) as port:
                    rate, cpu, machine = _round(round_url, "smtp", str(port), args.senders,
                                                args.each)
            else:
                folder = Path(folders.name) / f"round-{number}"
                rate, cpu, machine = _round(round_url, "file", str(folder), args.senders,
                                            args.each)
            log(f"round {number}: {rate:,.0f} notices/s into {args.backend} from "
                f"{args.senders} sender process(es); CPU per notice in each: "
                f"{', '.join(c + ' us' for c in cpu)}{machine}")
    finally:
        folders.cleanup()
        drop_database(args.pg_url, copy)
        drop_database(args.pg_url, NAME)
    if args.profile is not None:
        _print_profile(args.profile)
    return 0


def _print_profile(folder: Path) -> None:
    """The newest sender profile's top functions by their own time, and by time within."""
    import pstats

    newest = max(folder.glob("sender-*.prof"), key=lambda path: path.stat().st_mtime)
    log(f"profile of one sender: {newest}")
    stats = pstats.Stats(str(newest), stream=sys.stderr).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    raise SystemExit(main())
