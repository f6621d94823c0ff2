"""The operators' alerts: Prefect automations that notify through the notification block
named by REINSTATE_ALERT_BLOCK (`block-type-slug/block-name`, such as
`slack-webhook/ops-alerts` or `custom-webhook/ops-alerts`).

`reinstate deploy` and `reinstate serve` create them, or update them in place, by name:

- `ALERT_RUN_FAILED`: a run of one of the pipeline's flows entered Failed or Crashed,
  however it was started (a deployment, `reinstate run`, the nightly's runs of
  incidents); one notification per run. It knows a pipeline run by its flow, not by the
  tag `reinstatement`: Prefect's server describes a run's tags in its state events as
  they were at the run's first state, so a run tagged once it started (every run the
  CLI starts) would never alert; and tagging runs from their creation (`prefect.tags`)
  tags every task too, which then asks the server for a tag concurrency slot each;
- `ALERT_AWAITING_APPROVAL`: an incident awaiting approval (the event
  `reinstatement.incident.awaiting-approval`) that no `approved` or `rejected` event of the
  same incident followed within REINSTATE_ALERT_APPROVAL_HOURS (24); once per wait;
- `ALERT_NIGHTLY_OVERDUE`: the nightly-reconciliation deployment had no Completed run
  within 26 hours of its last one (armed by the first completed run after deploying).

The action is "send a notification" with the operator's block: Prefect's email block
cannot be an automation's action on a self-hosted server (PrefectHQ/prefect#16881), so a
webhook or Slack block carries the alert. An automation an operator turned off stays off
when the deployments are registered again. Without the setting nothing is created (nor
removed); a block that does not exist, or is no notification block, is refused before
anything is registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from reinstatement.errors import BadInput
from reinstatement.resources import resources
from tasks.events import APPROVED, AWAITING_APPROVAL, INCIDENT, REJECTED

ALERT_RUN_FAILED = "reinstatement: a pipeline run failed"
ALERT_AWAITING_APPROVAL = "reinstatement: an incident awaits approval too long"
ALERT_NIGHTLY_OVERDUE = "reinstatement: the nightly reconciliation is overdue"
ALERT_NAMES = (ALERT_RUN_FAILED, ALERT_AWAITING_APPROVAL, ALERT_NIGHTLY_OVERDUE)
NIGHTLY_WITHIN = timedelta(hours=26)
NOT_SET = ("alerts: none (set REINSTATE_ALERT_BLOCK to a notification block such as "
           "slack-webhook/ops-alerts, then deploy again)")


@dataclass(frozen=True)
class AlertBlock:
    spec: str  # block-type-slug/block-name, as the operator named it
    id: UUID


@dataclass
class AlertsDone:
    block: str | None
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the operator's console."""
        if self.block is None:
            return NOT_SET
        parts = [f"{len(self.created)} created"] if self.created else []
        parts += [f"{len(self.updated)} updated"] if self.updated else []
        return (f"alerts: {len(self.created) + len(self.updated)} automations notify "
                f"through {self.block} ({', '.join(parts)})")


def alert_block(client: Any) -> AlertBlock | None:
    """The notification block REINSTATE_ALERT_BLOCK names, checked on the server; None when
    the setting is unset. BadInput naming it when it does not exist or cannot notify."""
    from prefect.exceptions import ObjectNotFound

    spec = resources().settings.alert_block
    if spec is None:
        return None
    slug, _, name = spec.partition("/")
    try:
        document = client.read_block_document_by_name(name, slug, include_secrets=False)
    except ObjectNotFound:
        raise BadInput(f"REINSTATE_ALERT_BLOCK: there is no block {spec} on the Prefect "
                       "server: create a Slack webhook or custom webhook block of that "
                       "name first (Blocks in the Prefect UI), or correct the setting") from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise BadInput(f"REINSTATE_ALERT_BLOCK: the block {spec} cannot send notifications: "
                       "name a notification block (slack-webhook, custom-webhook, ...)")
    return AlertBlock(spec, document.id)


def automations(block: AlertBlock, nightly_deployment_id: UUID | None,
                approval_hours: float) -> list[Any]:
    """The pipeline's automations, notifying through `block`. Without the nightly's
    deployment id, no overdue alert (there is nothing to watch)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from deployments.definitions import PIPELINE_FLOWS

    def notify(subject: str, body: str) -> list[Any]:
        return [SendNotification(block_document_id=block.id, subject=subject, body=body)]

    run_failed = AutomationCore(
        name=ALERT_RUN_FAILED,
        description="A run of the pipeline's flows entered Failed or Crashed: its state "
        "message says why (reinstate report KEY; docs/operator-guide.md, 'When something "
        "fails').",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow",
                           "prefect.resource.name": sorted(f.name for f in PIPELINE_FLOWS)},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=notify(
            "reinstatement: run {{ flow_run.name }} {{ flow_run.state.name }}",
            "The flow run {{ flow_run.name }} ({{ flow.name }}) entered "
            "{{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
            "Tags: {{ flow_run.tags | join(', ') }}\n"
            "{{ (flow_run | ui_url) or '' }}"),
    )
    hours = f"{approval_hours:g}"
    awaiting = AutomationCore(
        name=ALERT_AWAITING_APPROVAL,
        description=f"An incident awaited an operator's decision for {hours} hours "
        "(REINSTATE_ALERT_APPROVAL_HOURS).",
        trigger=EventTrigger(
            after={AWAITING_APPROVAL},
            expect={APPROVED, REJECTED},
            match={"prefect.resource.id": f"{INCIDENT}.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1,
            within=timedelta(hours=approval_hours)),
        actions=notify(
            "reinstatement: incident {{ event.resource.name }} awaits approval",
            f"Incident {{{{ event.resource.name }}}} has awaited approval for {hours} hours: "
            "read its plan with `reinstate plan {{ event.resource.name }}`, then someone "
            "other than its declarer approves it (`reinstate approve`, or Resume its run "
            "in the Prefect UI) or rejects it (`reinstate reject`)."),
    )
    found = [run_failed, awaiting]
    if nightly_deployment_id is not None:
        found.append(AutomationCore(
            name=ALERT_NIGHTLY_OVERDUE,
            description="The nightly-reconciliation deployment had no Completed run within "
            "26 hours of its last one.",
            trigger=EventTrigger(
                after={"prefect.flow-run.Completed"},
                expect={"prefect.flow-run.Completed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "deployment",
                               "prefect.resource.id":
                                   f"prefect.deployment.{nightly_deployment_id}"},
                posture=Posture.Proactive, threshold=1, within=NIGHTLY_WITHIN),
            actions=notify(
                "reinstatement: the nightly reconciliation is overdue",
                "No run of the nightly-reconciliation deployment completed in the 26 hours "
                "since the last one: is `reinstate serve` (or a worker of its pool) "
                "running, and did the last run fail? Its runs are on the deployment's "
                "page in the Prefect UI."),
        ))
    return found


def ensure_automations(client: Any, wanted: list[Any]) -> tuple[list[str], list[str]]:
    """Create each automation, or update the one of its name in place (and remove any
    further copies of that name, so that an alert never goes out twice); an automation an
    operator turned off stays off. The names created and updated."""
    created, updated = [], []
    for automation in wanted:
        existing = client.read_automations_by_name(automation.name)
        if not existing:
            client.create_automation(automation)
            created.append(automation.name)
            continue
        keep, *copies = existing
        automation.enabled = keep.enabled
        client.update_automation(keep.id, automation)
        for copy in copies:
            client.delete_automation(copy.id)
        updated.append(automation.name)
    return created, updated


def install_alerts(client: Any, block: AlertBlock | None,
                   nightly_deployment_id: UUID | None) -> AlertsDone:
    """The automations, through `block` (from `alert_block`, checked before anything was
    registered); none without one."""
    if block is None:
        return AlertsDone(None)
    hours = resources().settings.alert_approval_hours
    created, updated = ensure_automations(
        client, automations(block, nightly_deployment_id, hours))
    return AlertsDone(block.spec, created, updated)
