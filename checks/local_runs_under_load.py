"""Back-to-back local runs on a busy machine: none may die of Prefect's start-up limit.

Makes a fresh SQLite platform in a temporary folder, seeds an incident, starts CPU-bound
processes beside it (one by default, like another job on the machine) and then runs
`reinstate run ... --dry-run` N times in a row with PREFECT_HOME and PREFECT_API_URL unset,
so each run starts Prefect's temporary server the way an engineer's first runs do. Prints
each run's exit status and wall time, and exits 1 if any run failed.

    .venv/bin/python -m checks.local_runs_under_load [--runs 10] [--hogs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_KEY, INCIDENT_SINCE, INCIDENT_UNTIL

REINSTATE = Path(sys.executable).with_name("reinstate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes beside")
    parser.add_argument("--accounts", type=int, default=2000)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REINSTATE_"))}
    with tempfile.TemporaryDirectory(prefix="reinstate-local-") as folder:
        def reinstate(*words: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(REINSTATE), *words], cwd=folder, env=env, text=True,
                                  capture_output=True, check=False)

        for words in (("db", "create-platform"), ("db", "upgrade"),
                      ("seed", "--accounts", str(args.accounts))):
            done = reinstate(*words)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return 1
        command = ["run", INCIDENT_KEY, "--dry-run",
                   "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat()]
        for version in INCIDENT_FAULTY:
            command += ["--faulty", version]
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.hogs)]
        failures = 0
        try:
            for number in range(1, args.runs + 1):
                started = time.monotonic()
                done = reinstate(*command)
                seconds = time.monotonic() - started
                ok = done.returncode == 0 and f"incident {INCIDENT_KEY}: previewed" in done.stdout
                failures += not ok
                first = " (first: migrates Prefect's database)" if number == 1 else ""
                print(f"run {number:>2}: exit {done.returncode}, {seconds:5.1f} s{first}")
                if not ok:
                    print("  " + (done.stderr.strip().splitlines() or ["no output"])[-1])
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        home = Path(folder) / ".prefect"
        print(f"Prefect home kept at {home.name}/ in the run folder: {home.exists()}")
    print(f"{args.runs - failures} of {args.runs} runs succeeded with {args.hogs} busy "
          f"process(es) beside them")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
