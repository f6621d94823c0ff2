"""The pipeline's Prefect deployments, assembled in one place.

`reinstate serve` registers them against PREFECT_API_URL and serves their runs from
that process; operators then start incident runs from the Prefect UI's parameter form.
"""

from __future__ import annotations

from typing import Any

from flows.reinstate_incident import reinstate_incident

INCIDENT_DEPLOYMENT = "reinstate-incident"


def incident_deployment() -> Any:
    """Runs started from the UI: no schedule, the typed form, approval on by default."""
    return reinstate_incident.to_deployment(
        name=INCIDENT_DEPLOYMENT,
        description="Declare an incident: name the faulty rule versions (and optionally a "
        "window or a list of accounts), preview the outcomes, approve, restore and notify.",
        tags=["reinstatement"],
    )


def all_deployments() -> list[Any]:
    return [incident_deployment()]
