"""A reviewer's decision on a `needs_review` case, from the Prefect UI.

The same decision as `reinstate review decide`: reinstate (the case then goes through
restore and notice like any other) or uphold, audited with the reviewer and the note.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field

from reinstatement.review import apply_review


@task(name="apply-review-decision", cache_policy=NO_CACHE)
def apply_review_decision(case_id: int, decision: Literal["reinstate", "uphold"],
                          reviewer: str, note: str) -> dict[str, Any]:
    """Record the decision; for a reinstatement, restore the case and send its notice."""
    return apply_review(case_id, decision, reviewer, note)


def _review_run_name() -> str:
    """`review case 123 (INC-2025-04-spam)`: the incident read from the case itself."""
    from prefect.runtime import flow_run
    from sqlalchemy import select

    from reinstatement.db import pipeline_engine
    from reinstatement.models import Case, Incident

    case_id = flow_run.parameters.get("case_id")
    try:
        with pipeline_engine().connect() as conn:
            key = conn.execute(select(Incident.key).join(Case, Case.incident_id == Incident.id)
                               .where(Case.id == case_id)).scalar_one_or_none()
    except Exception:  # noqa: BLE001 - a name must never stop the decision
        key = None
    return f"review case {case_id}" + (f" ({key})" if key else "")


@flow(name="review-case", description="Decide a case that verification sent to review.",
      flow_run_name=_review_run_name)
def review_case(
    case_id: int = Field(..., ge=1, description="The case id, from `reinstate review list`."),
    decision: Literal["reinstate", "uphold"] = Field(
        ..., description="reinstate: lift the ban and notify; uphold: keep the ban."),
    reviewer: str = Field(..., min_length=1, max_length=100, description="Your name."),
    note: str = Field(..., min_length=1, max_length=2000, description="Why."),
) -> dict[str, Any]:
    """Apply one reviewer's decision to one case."""
    result = apply_review_decision(case_id, decision, reviewer, note)
    get_run_logger().info("case %s: %s by %s -> %s", case_id, decision, reviewer,
                          result["outcome"])
    return result
