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


def _sender(url: str, backend: str, target: str, limit: int) -> int:
    """One sender process's part: claim `limit` due notices and send them; prints its CPU."""
    from reinstatement import outbox
    from reinstatement.db import make_engine
    from reinstatement.notices.backends import FileBackend, SmtpBackend
    from reinstatement.notices.render import NoticeRenderer

    engine = make_engine(url)
    chosen = (SmtpBackend("127.0.0.1", int(target), sender=SENDER) if backend == "smtp"
              else FileBackend(Path(target) / str(os.getpid())))
    cpu = time.process_time()
    result = outbox.send_batch(engine, chosen, NoticeRenderer(), limit, sender=SENDER,
                               lease=timedelta(minutes=30))
    used = time.process_time() - cpu
    sys.stdout.write(f"{result.sent} {used / max(1, result.sent) * 1e6:.0f}\n")
    engine.dispose()
    return 0 if result.sent else 1


def _round(url: str, backend: str, target: str, senders: int, each: int) -> tuple[float, list[str]]:
    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-m", "bench.notify_bench", "--child", url,
                                  backend, target, str(each)], stdout=subprocess.PIPE)
                for _ in range(senders)]
    outputs = [child.communicate()[0].decode().split() for child in children]
    elapsed = time.perf_counter() - started
    if any(child.returncode for child in children):
        raise RuntimeError(f"a sender failed: {outputs}")
    sent = sum(int(out[0]) for out in outputs)
    return sent / elapsed, [out[1] for out in outputs]


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
    args = parser.parse_args(argv)
    sink = smtp_sink_path()
    if args.backend == "smtp" and sink is None:
        sys.stderr.write(SMTP_SINK_HINT + "\n")
        return 2
    from reinstatement import outbox, runner
    from reinstatement.db import make_engine
    from reinstatement.incidents import build_request
    from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_KEY, INCIDENT_SINCE, INCIDENT_UNTIL

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
    try:
        for number in range(1, args.rounds + 1):
            round_url = recreate_database(args.pg_url, copy, template=NAME)
            if args.backend == "smtp":
                assert sink is not None
                with smtp_sink(sink) as port:
                    rate, cpu = _round(round_url, "smtp", str(port), args.senders, args.each)
            else:
                with tempfile.TemporaryDirectory(prefix="reinstate-notify-bench-") as folder:
                    rate, cpu = _round(round_url, "file", folder, args.senders, args.each)
            log(f"round {number}: {rate:,.0f} notices/s into {args.backend} from "
                f"{args.senders} sender process(es); CPU per notice in each: "
                f"{', '.join(c + ' us' for c in cpu)}")
    finally:
        drop_database(args.pg_url, copy)
        drop_database(args.pg_url, NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
