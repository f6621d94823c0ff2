"""A reviewer's decision on a `needs_review` case, from the Prefect UI.

The same decision as `reinstate review decide`: reinstate (the case then goes through
restore and notice like any other) or uphold, audited with the reviewer and the note.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field

from flows.run_state import failed_plainly, tag_run_with_incident
from reinstatement.approval import VIA_PREFECT_UI
from reinstatement.errors import BadInput
from reinstatement.resources import resources
from reinstatement.review import apply_review, reviewer_actor
from tasks.events import announcing_transitions
from tasks.notify import send_case_notices
from tasks.reporting import publish_report


@task(name="apply-review-decision", cache_policy=NO_CACHE)
def apply_review_decision(case_id: int, decision: Literal["reinstate", "uphold"],
                          reviewer: str, note: str) -> dict[str, Any]:
    """Record the decision; for a reinstatement, restore the case and send its notice.

    A refused decision (no such case, not waiting, the incident not approved) comes back as
    {"refused": why}: bad input, for the flow to fail plainly, not a task traceback.
    """
    try:
        with announcing_transitions(actor=reviewer_actor(reviewer)):
            return apply_review(case_id, decision, reviewer, note, VIA_PREFECT_UI,
                                send_notices=send_case_notices)
    except BadInput as exc:
        return {"refused": str(exc)}


def _review_run_name() -> str:
    """`review case 123 (INC-2025-04-spam)`: the incident read from the case itself."""
    from prefect.runtime import flow_run
    from sqlalchemy import select

    from reinstatement.models import Case, Incident

    case_id = flow_run.parameters.get("case_id")
    try:
        with resources().engine.connect() as conn:
            key = conn.execute(select(Incident.key).join(Case, Case.incident_id == Incident.id)
                               .where(Case.id == case_id)).scalar_one_or_none()
    except Exception:  # noqa: BLE001 - a name must never stop the decision
        key = None
    return f"review case {case_id}" + (f" ({key})" if key else "")


@flow(name="review-case", description="Decide a case that verification sent to review.",
      flow_run_name=_review_run_name)
def review_case(
    case_id: Annotated[int, Field(
        ge=1, title="Case id",
        description="In the Prefect UI: Artifacts, then the incident's review list "
        "(review-..., its first page; more pages are review-page-2-... and on) lists every "
        "case waiting, with its case id, account and whole reason; the incident run's "
        "Artifacts tab shows the same pages. From a terminal: `reinstate review list KEY` "
        "(--csv for a spreadsheet).")],
    decision: Annotated[Literal["reinstate", "uphold"], Field(
        title="Decision",
        description="reinstate: lift the ban, restore the pins it hid and notify the user; "
        "uphold: keep the ban.")],
    reviewer: Annotated[str, Field(min_length=1, max_length=100, title="Reviewer",
                                   description="Your name or handle, for the audit trail.")],
    note: Annotated[str, Field(min_length=1, max_length=2000, title="Note",
                               description="Why you decided so, for the audit trail.")],
) -> Any:
    """Apply one reviewer's decision to one case; the incident's report and review list
    are published again with it.

    Args:
        case_id: The case to decide. In the Prefect UI: open the incident's run, its
            Artifacts tab, and the review list review-... : it lists the cases waiting,
            with case id, account and whole reason, in pages (review-page-2-... and on,
            linked from each page; the newest version, after other decisions, is at
            /v2/artifacts/key/review-...). From a terminal: `reinstate review list KEY`.
        decision: reinstate: lift the ban, restore the pins it hid and notify the user;
            uphold: keep the ban.
        reviewer: Your name or handle, for the audit trail.
        note: Why you decided so, for the audit trail.
    """
    result = apply_review_decision(case_id, decision, reviewer, note)
    if "refused" in result:
        return failed_plainly(BadInput(result["refused"]))
    tag_run_with_incident(result["incident"])
    get_run_logger().info("case %s: %s by %s -> %s", case_id, decision, reviewer,
                          result["outcome"])
    publish_report(result["incident"])
    return result
