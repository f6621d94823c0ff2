"""The pipeline's Prefect deployments, assembled in one place.

`reinstate serve` registers them against PREFECT_API_URL and serves their runs from that
process (Prefect's `serve`, which needs no separate worker or work pool); operators then
start incident runs from the UI's parameter form, reviewers decide cases, and the
nightly reconciliation runs on its schedule.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.schedules import Cron

from flows.reconcile import nightly_reconciliation
from flows.reinstate_incident import reinstate_incident, resume_incident
from flows.review import review_case

INCIDENT_DEPLOYMENT = "reinstate-incident"
RECONCILIATION_DEPLOYMENT = "nightly-reconciliation"
RESUME_DEPLOYMENT = "resume-incident"
REVIEW_DEPLOYMENT = "review-case"
DEFAULT_RECONCILIATION_CRON = "0 2 * * *"


def reconciliation_cron() -> str:
    """When the reconciliation runs, UTC; REINSTATE_RECONCILIATION_CRON overrides."""
    return os.environ.get("REINSTATE_RECONCILIATION_CRON", DEFAULT_RECONCILIATION_CRON)


def incident_deployment() -> Any:
    """Runs started from the UI: no schedule, the typed form, approval on by default."""
    return reinstate_incident.to_deployment(
        name=INCIDENT_DEPLOYMENT,
        description="Declare an incident: name the faulty rule versions (and optionally a "
        "window or a list of accounts), preview the outcomes, approve, restore and notify.",
        tags=["reinstatement"],
    )


def reconciliation_deployment() -> Any:
    return nightly_reconciliation.to_deployment(
        name=RECONCILIATION_DEPLOYMENT,
        description="Every night: resume what crashed, send what is due, re-reinstate "
        "accounts banned again by a faulty version, check invariants.",
        schedules=[Cron(reconciliation_cron(), timezone="UTC")],
        parameters={"auto_reinstate": False, "dry_run": False},
        tags=["reinstatement"],
    )


def resume_deployment() -> Any:
    return resume_incident.to_deployment(
        name=RESUME_DEPLOYMENT,
        description="Continue a running or approved incident where its last run stopped.",
        tags=["reinstatement"],
    )


def review_deployment() -> Any:
    return review_case.to_deployment(
        name=REVIEW_DEPLOYMENT,
        description="Decide a needs_review case: reinstate or uphold, with a note.",
        tags=["reinstatement"],
    )


def all_deployments() -> list[Any]:
    return [incident_deployment(), reconciliation_deployment(), resume_deployment(),
            review_deployment()]
