"""Run the seeded incident through the Prefect flow, in a process of its own.

`bench.pipeline_bench` starts this module as a child so that the peak RSS it reads
after the child exits is the flow's alone (not the benchmark's, not Prefect's server).
Settings come from the environment (REINSTATE_DATABASE_URL, REINSTATE_EMAIL_BACKEND,
REINSTATE_SMTP_*, PREFECT_API_URL), exactly as for `reinstate run`.

    python -m bench.run_flow --batch-size 5000 [--notify] [--shape mixed]

Prints one JSON line: the incident's report as the flow returned it.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--notify", action="store_true", help="send the notices too")
    parser.add_argument("--shape", default="standard", help="the seeded shape's incident")
    args = parser.parse_args(argv)

    from flows.reinstate_incident import reinstate_incident
    from reinstatement import seed
    from reinstatement.incident_request import build_request

    request = build_request(
        incident_key=seed.INCIDENT_KEY,
        faulty_versions=list(seed.incident_faulty(args.shape)),
        since=seed.INCIDENT_SINCE,
        until=seed.INCIDENT_UNTIL,
        notify=args.notify,
        batch_size=args.batch_size,
        require_approval=False,
    )
    report = reinstate_incident(request)
    sys.stdout.write(json.dumps(report, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
