"""Register every deployment against PREFECT_API_URL and serve their runs from this process.

`reinstate serve` runs this; so does `python -m deployments.serve`.
"""

from __future__ import annotations

from prefect import serve

from deployments.definitions import all_deployments


def main(limit: int | None = None) -> None:
    """Block, executing the deployments' runs as the Prefect server schedules them."""
    serve(*all_deployments(), limit=limit)


if __name__ == "__main__":
    main()
