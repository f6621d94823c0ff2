"""Run a command and say how much CPU each kind of process used while it ran.

    .venv/bin/python -m checks.cpu_by_process -- .venv/bin/python -m pytest -n 3 ...

Reads every process's CPU time from /proc twice a second (a process's CPU after the last
read before it ends is missed, up to half a second of it; the suite's processes live
seconds at least, so the figures are a little low) and, when the command ends, prints to
stderr the CPU seconds each kind used since it started, by the kind its command line
names: pytest workers, Prefect servers, `reinstate` processes, flow runs in child
processes, Chromium, PostgreSQL, and the rest. Processes of the whole machine are
counted, so run it with nothing else running. docs/testing.md has the figures it gave.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
KINDS = (  # the first whose words all appear in the command line
    # A PostgreSQL backend's title names its database (reinstate_t_...): first.
    ("PostgreSQL", ("postgres:",)),
    ("PostgreSQL", ("bin/postgres",)),
    ("Chromium", ("chromium",)),
    ("Prefect test servers", ("uvicorn", "prefect.server")),
    ("`prefect server start`", ("prefect", "server", "start")),
    ("pytest workers", ("import sys;exec(eval(sys.stdin",)),
    ("pytest workers", ("pytest",)),
    ("flow runs in child processes", ("prefect.engine",)),
    ("flow runs in child processes", ("prefect.runner",)),
    ("flow runs in child processes", ("multiprocessing",)),
    ("`reinstate` processes", ("reinstate",)),
    ("`reinstate` processes", ("deployments.serve",)),
    ("other Prefect commands", ("bin/prefect",)),
)


def kind(command: str) -> str:
    for name, words in KINDS:
        if all(word in command for word in words):
            return name
    return "other: " + command[:50]


def read(seen: dict[tuple[int, int], list[Any]]) -> None:
    """Each process's command line (once) and its CPU seconds so far, by (pid, start)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICKS
            key = (int(entry), int(fields[19]))
            if key in seen:
                seen[key][2] = cpu
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            seen[key] = [command, cpu, cpu]
        except (OSError, IndexError, ValueError):
            pass  # gone between the listing and the read


def main() -> int:
    command = sys.argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        sys.stderr.write("usage: python -m checks.cpu_by_process -- COMMAND...\n")
        return 2
    seen: dict[tuple[int, int], list[Any]] = {}
    read(seen)
    before = {key: float(values[2]) for key, values in seen.items()}
    started = time.monotonic()
    process = subprocess.Popen(command)
    while process.poll() is None:
        read(seen)
        time.sleep(0.5)
    read(seen)
    wall = time.monotonic() - started
    used: Counter[str] = Counter()
    for key, (line, _first, last) in seen.items():
        spent = float(last) - before.get(key, 0.0)
        if spent > 0:
            used[kind(str(line))] += spent
    sys.stderr.write(f"wall {wall:.1f} s, CPU {sum(used.values()):.1f} s "
                     f"({sum(used.values()) / wall / (os.cpu_count() or 1):.0%} of all cores)\n")
    for name, seconds in used.most_common(15):
        sys.stderr.write(f"  {seconds:8.1f} {name}\n")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
