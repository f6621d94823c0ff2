"""SMTP pipelining on and off (`REINSTATE_SMTP_PIPELINING`), through a proxy adding latency.

Starts an SMTP sink (Postfix's `smtp-sink` where it is installed, else aiosmtpd in a
child process, offering PIPELINING as most servers do), and in front of it a TCP proxy
that delays every byte by a fixed one-way time (bench/latency_proxy.py, its own process).
For each delay it sends the same N rendered notices through the backend the settings
build, pipelining on and off in turn, each notice told which comes next as the outbox
does, one connection a run, and prints notices per second and the sender's CPU per
notice. Only the sends are timed: the notices are rendered before.

    .venv/bin/python -m bench.smtp_pipelining_ab --notices 2000 --delays 0,1,5 --rounds 2

Pipelining on, a notice costs one round trip (its envelope went out with the last
notice's data); off, four (MAIL, RCPT, DATA, the content). The runs alternate (on, off,
on, off...) so that whatever else the machine does falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from bench.pipeline_bench import free_port, log, smtp_sink, smtp_sink_path
from reinstatement.notices.backends import PipeliningSmtpBackend
from reinstatement.notices.render import (
    SUPPORTED_LOCALES,
    NoticeContext,
    NoticeRenderer,
    message_id_for,
)
from reinstatement.resources import backend_from_settings
from reinstatement.settings import EmailBackendName, Settings

SENDER = "Trust & Safety <trust-and-safety@example.com>"
Notice = tuple[str, str, bytes]  # recipient, message id, the message


def notices(count: int) -> list[Notice]:
    """`count` rendered notices in every language, a few names with trouble in them."""
    renderer = NoticeRenderer()
    names = (None, "Zoë 🌸", "山田 太郎", '<b>x</b> & "q"')
    out = []
    for index in range(count):
        account_id = 2_000_000 + index
        ctx = NoticeContext(
            incident_key="INC-AB", case_id=index + 1, account_id=account_id,
            username=f"user_{account_id}", display_name=names[index % len(names)],
            recipient=f"user{account_id}@example.com",
            locale=SUPPORTED_LOCALES[index % len(SUPPORTED_LOCALES)],
            rule_names=("spam_burst",), ban_date=datetime(2025, 4, 15, tzinfo=UTC),
            pins_restored=index % 5, message_id=message_id_for("INC-AB", account_id,
                                                               "example.com"),
            sender=SENDER)
        out.append((ctx.recipient, ctx.message_id, renderer.render_bytes(ctx)))
    return out


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port}")


@contextmanager
def _child(command: list[str], port: int, what: str) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, process, what)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def sink(choice: str) -> Iterator[tuple[int, str]]:
    """A sink that accepts and discards every message: its port, and what it is."""
    binary = smtp_sink_path() if choice in ("auto", "smtp-sink") else None
    if choice == "smtp-sink" and binary is None:
        raise SystemExit("smtp-sink is not installed (apt-get install postfix)")
    if binary is not None:
        with smtp_sink(binary) as port:
            yield port, f"smtp-sink ({binary})"
        return
    port = free_port()
    with _child([sys.executable, "-m", "bench.smtp_pipelining_ab", "--aiosmtpd-sink",
                 str(port)], port, "the aiosmtpd sink"):
        yield port, "aiosmtpd (smtp-sink is not installed)"


def _aiosmtpd_sink(port: int) -> int:
    """Child process: an aiosmtpd server that offers PIPELINING and discards every message."""
    from typing import Any

    from aiosmtpd.controller import Controller

    class Discard:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                              hostname: str, responses: list[str]) -> list[str]:
            session.host_name = hostname
            responses.insert(-1, "250-PIPELINING")
            return responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    controller = Controller(Discard(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        controller.stop()
    return 0


def round_trip_ms(port: int, count: int = 200) -> float:
    """The median time of one SMTP command and its reply (NOOP) through the proxy: what
    the added delay really costs a round trip, the proxy's own overhead included."""
    import smtplib

    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        smtp.ehlo()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            smtp.noop()
            times.append(time.perf_counter() - started)
        smtp.quit()
    finally:
        smtp.close()
    return statistics.median(times) * 1000


def run(port: int, pipelining: bool, batch: list[Notice]) -> tuple[float, float]:
    """Notices per second and the sender's CPU microseconds a notice, one connection."""
    settings = Settings(email_backend=EmailBackendName.SMTP, email_from=SENDER,
                        smtp_host="127.0.0.1", smtp_port=port, smtp_pipelining=pipelining)
    backend = backend_from_settings(settings)
    assert isinstance(backend, PipeliningSmtpBackend) == pipelining
    with backend:
        cpu, started = time.process_time(), time.perf_counter()
        for index, (recipient, message_id, message) in enumerate(batch):
            following = batch[index + 1][:2] if index + 1 < len(batch) else None
            backend.send(recipient, message_id, message, following)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    return len(batch) / elapsed, used / len(batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--aiosmtpd-sink"]:
        return _aiosmtpd_sink(int(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=2000, help="notices a run")
    parser.add_argument("--delays", default="0,1,5",
                        help="one-way delays the proxy adds, in ms, comma-separated")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each mode at each delay, alternating")
    parser.add_argument("--sink", choices=("auto", "smtp-sink", "aiosmtpd"), default="auto")
    args = parser.parse_args(argv)
    delays = [float(delay) for delay in args.delays.split(",")]
    batch = notices(args.notices)
    log(f"rendered {len(batch)} notices")
    results: dict[tuple[float, bool], list[tuple[float, float]]] = {}
    round_trips: dict[float, float] = {}
    with sink(args.sink) as (sink_port, sink_name):
        log(f"sink: {sink_name}")
        for delay in delays:
            proxy_port = free_port()
            with _child([sys.executable, "-m", "bench.latency_proxy", str(proxy_port),
                         str(sink_port), str(delay)], proxy_port, "the latency proxy"):
                round_trips[delay] = round_trip_ms(proxy_port)
                log(f"{delay:g} ms one-way: a round trip takes {round_trips[delay]:.2f} ms")
                for round_number in range(args.rounds):
                    # Alternate which mode goes first, so neither always follows the other.
                    modes = (True, False) if round_number % 2 == 0 else (False, True)
                    for pipelining in modes:
                        rate, cpu = run(proxy_port, pipelining, batch)
                        results.setdefault((delay, pipelining), []).append((rate, cpu))
                        log(f"{delay:g} ms one-way, pipelining {'on' if pipelining else 'off'}"
                            f": {rate:,.0f} notices/s, {cpu:.0f} us CPU a notice")
    lines = [f"sink: {sink_name}; {args.notices:,} notices a run, {args.rounds} runs of each "
             "mode at each delay, alternating",
             "",
             "| added one-way delay | measured round trip | pipelining on, notices/s "
             "| off, notices/s | on / off (medians) | sender CPU a notice, on / off |",
             "|---:|---:|---:|---:|---:|---:|"]
    for delay in delays:
        on, off = results[(delay, True)], results[(delay, False)]
        on_rate = statistics.median(rate for rate, _ in on)
        off_rate = statistics.median(rate for rate, _ in off)
        on_rates = " / ".join(f"{rate:,.0f}" for rate, _ in on)
        off_rates = " / ".join(f"{rate:,.0f}" for rate, _ in off)
        lines.append(
            f"| {delay:g} ms | {round_trips[delay]:.2f} ms | {on_rates} "
            f"| {off_rates} | {on_rate / off_rate:.2f}x "
            f"| {statistics.median(cpu for _, cpu in on):.0f} / "
            f"{statistics.median(cpu for _, cpu in off):.0f} us |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
