"""What else the machine did while a measured phase ran: the CPU its other work took.

The benchmark compares the pipeline (two batches at once, the flow process, Prefect's
server: work for both cores) with the floor (one transaction: one core). Other work on
the machine takes more from the first than from the second, so a ratio measured beside it
says little about the pipeline; the benchmark says how busy the machine was beside each.

The machine's busy time comes from `/proc/stat`; the benchmark's own share is PostgreSQL's
processes (every process named `postgres`, with the backends its postmaster has reaped)
and this process with its descendants (the flow run, its sender processes, Prefect's
server, smtp-sink), live or reaped. The rest is other work. Linux only; elsewhere nothing
is measured.

PostgreSQL's own CPU over a phase is told too: the work the database did for it. The floor
does all of its work there, on one core; when the pipeline's database work is more than
twice the floor's, the pipeline is within 2x only by using both cores at once.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuMark:
    busy: float  # CPU seconds the machine has spent busy since it booted, all cores
    ours: float  # of them, PostgreSQL's and this process tree's
    at: float  # time.monotonic()
    database: float = 0.0  # of `ours`, PostgreSQL's


@dataclass(frozen=True)
class OtherWork:
    """The CPU the machine's other work took over a phase, and PostgreSQL's."""

    cpu_seconds: float
    wall_seconds: float
    database_cpu_seconds: float = 0.0

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"other work on the machine {self.cpu_seconds:.1f} CPU s ({self.cores:.2f} of "
                f"its {os.cpu_count() or 1} cores)")


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _processes() -> Iterator[tuple[int, str, int, float]]:
    """(pid, name, parent pid, CPU seconds with its reaped children) of each process."""
    ticks = _ticks()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # After the name: state, ppid, ...; utime, stime, cutime, cstime are fields 14-17.
        cpu = sum(int(value) for value in fields[11:15]) / ticks
        yield int(entry.name), name, int(fields[1]), cpu


def _machine_busy() -> float:
    """Busy CPU seconds of all cores since boot: all but idle and I/O wait."""
    fields = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _ticks()


def cpu_mark() -> CpuMark | None:
    """Where the machine's CPU and ours stood now (None where /proc cannot tell)."""
    if not (PROC / "stat").exists():
        return None
    processes = list(_processes())
    children: dict[int, list[int]] = {}
    for pid, _, parent, _ in processes:
        children.setdefault(parent, []).append(pid)
    cpu = {pid: seconds for pid, _, _, seconds in processes}
    database = sum(seconds for _, name, _, seconds in processes if name == "postgres")
    ours = database
    waiting, tree = list(children.get(os.getpid(), [])), set()
    while waiting:
        pid = waiting.pop()
        if pid not in tree:
            tree.add(pid)
            waiting.extend(children.get(pid, []))
    ours += sum(cpu[pid] for pid in tree if pid in cpu)
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return CpuMark(busy=_machine_busy(), ours=ours, at=time.monotonic(), database=database)


def wait_for_backends(database: str | None = None, timeout: float = 10.0) -> bool:
    """Wait until PostgreSQL has reaped every backend that ended (and, with `database`, until
    no backend is connected to that database): a backend's CPU moves into its postmaster's
    only when reaped, and one read between its exit and then would count nowhere. True when
    none is left within `timeout` seconds (False, or nothing to read: measure anyway)."""
    if not PROC.exists():
        return False
    title = None if database is None else f" {database} ".encode()
    deadline = time.monotonic() + timeout
    while True:
        pending = False
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
                if raw[raw.index("(") + 1:raw.rindex(")")] != "postgres":
                    continue
                cmdline = (entry / "cmdline").read_bytes()
                # a backend on its way out has released its memory (an empty command line)
                # before it becomes a zombie: it is not reaped yet either
                ended = raw[raw.rindex(")") + 2] == "Z" or not cmdline
                if ended or (title is not None and title in cmdline):
                    pending = True
                    break
            except OSError:  # it ended meanwhile
                continue
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def other_work_since(mark: CpuMark | None) -> OtherWork | None:
    """The CPU other work took since `mark` (never below zero: the clocks tick apart)."""
    now = cpu_mark()
    if mark is None or now is None:
        return None
    others = (now.busy - mark.busy) - (now.ours - mark.ours)
    return OtherWork(cpu_seconds=max(others, 0.0), wall_seconds=now.at - mark.at,
                     database_cpu_seconds=max(now.database - mark.database, 0.0))
