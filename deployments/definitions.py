"""The pipeline's Prefect deployments, assembled in one place.

Two ways to run them, with the same definitions:

- `reinstate serve` registers them against PREFECT_API_URL and serves their runs from that
  process (Prefect's `serve`, which needs no separate worker or work pool);
- `reinstate deploy` registers them on a work pool (deployments/pool.py), and any number of
  `prefect worker start --pool ...` processes, on any machines, execute their runs. There
  the entrypoints are module paths (flows.reinstate_incident.reinstate_incident), so a
  worker needs this package installed, not a checkout of it in its working directory.

Operators then start incident runs from the UI's parameter form, reviewers decide cases,
the nightly reconciliation runs on its schedule, and incident runs with child runs launch
`incident-step` runs for their steps.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.incident_step import STEP_DEPLOYMENT, incident_step
from flows.notices import resend_notices
from flows.reconcile import nightly_reconciliation
from flows.reinstate_incident import reinstate_incident, resume_incident
from flows.review import review_case

INCIDENT_DEPLOYMENT = "reinstate-incident"
RECONCILIATION_DEPLOYMENT = "nightly-reconciliation"
RESUME_DEPLOYMENT = "resume-incident"
REVIEW_DEPLOYMENT = "review-case"
RESEND_DEPLOYMENT = "resend-notices"
# The nightly schedule's slug: a redeploy updates this schedule in place.
NIGHTLY_SCHEDULE = "nightly"
DEFAULT_RECONCILIATION_CRON = "0 2 * * *"


def reconciliation_cron() -> str:
    """When the reconciliation runs, UTC; REINSTATE_RECONCILIATION_CRON overrides."""
    return os.environ.get("REINSTATE_RECONCILIATION_CRON", DEFAULT_RECONCILIATION_CRON)


FILE = EntrypointType.FILE_PATH
# Every flow of the pipeline: the alert on failed runs (deployments/alerts.py) knows a
# pipeline run by its flow, however the run was started.
PIPELINE_FLOWS = (reinstate_incident, resume_incident, nightly_reconciliation, review_case,
                  resend_notices, incident_step)


def incident_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    """Runs started from the UI: no schedule, the typed form, approval on by default."""
    return reinstate_incident.to_deployment(
        name=INCIDENT_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="Declare an incident: name the faulty rule versions (and optionally a "
        "window or a list of accounts), preview the outcomes, approve, restore and notify.",
        tags=["reinstatement"],
    )


def reconciliation_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    return nightly_reconciliation.to_deployment(
        name=RECONCILIATION_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="Every night: resume what crashed, send what is due, re-reinstate "
        "accounts banned again by a faulty version, check invariants.",
        schedules=[Cron(reconciliation_cron(), timezone="UTC", slug=NIGHTLY_SCHEDULE)],
        parameters={"auto_reinstate": False, "dry_run": False},
        tags=["reinstatement"],
    )


def resume_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    return resume_incident.to_deployment(
        name=RESUME_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="Continue a running or approved incident where its last run stopped.",
        tags=["reinstatement"],
    )


def review_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    return review_case.to_deployment(
        name=REVIEW_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="Decide a needs_review case: reinstate or uphold, with a note.",
        tags=["reinstatement"],
    )


def resend_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    return resend_notices.to_deployment(
        name=RESEND_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="Queue an incident's failed notices again, with their Message-IDs, "
        "once the mail server takes them (as `reinstate notices resend`).",
        tags=["reinstatement"],
    )


def step_deployment(entrypoint_type: EntrypointType = FILE) -> Any:
    """The child runs of an incident run with child_runs > 1: one step, its batches."""
    return incident_step.to_deployment(
        name=STEP_DEPLOYMENT,
        entrypoint_type=entrypoint_type,
        description="One step of an incident run, as one of its child runs (launched by "
        "reinstate-incident or resume-incident with child_runs > 1; not for starting by "
        "hand, though that is safe: it only claims work that is due).",
        tags=["reinstatement"],
    )


def all_deployments(entrypoint_type: EntrypointType = FILE) -> list[Any]:
    return [builder(entrypoint_type) for builder in (
        incident_deployment, reconciliation_deployment, resume_deployment, review_deployment,
        resend_deployment, step_deployment)]


def as_the_operator_left_them(deployments: list[Any]) -> list[Any]:
    """The deployments, each keeping what an operator set on the server: a paused
    deployment stays paused, and a schedule an operator turned off (found by its slug)
    stays off. Prefect's registration would otherwise send `paused=False` and every
    schedule active, turning back on what was turned off (Prefect issue #19302)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            try:
                found = client.read_deployment_by_name(
                    f"{deployment.flow_name}/{deployment.name}")
            except ObjectNotFound:
                continue
            deployment.paused = bool(found.paused)
            inactive = {s.slug for s in found.schedules if s.slug and not s.active}
            for schedule in deployment.schedules or []:
                if getattr(schedule, "slug", None) in inactive:
                    schedule.active = False
    return deployments
