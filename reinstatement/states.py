"""The states of a case and of a notice, and the pipeline's own name as an actor.

Plain values, read by every layer (steps, outbox, review, reports, flows): the diagram of
a case's states is in `reinstatement/claims.py`, a notice's in `reinstatement/outbox.py`.
"""

from __future__ import annotations

PIPELINE_ACTOR = "reinstatement-pipeline"


class CaseState:
    PLANNED = "planned"
    PREVIEWED = "previewed"
    VERIFIED = "verified"
    REVIEW = "review"
    RESTORED = "restored"
    CLOSED = "closed"


class NoticeState:
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    NO_ADDRESS = "no_address"
    SUPPRESSED = "suppressed"  # the incident was run with notify off
