"""The incident's lifecycle: approval belongs to the incident, and nothing bypasses it.

Every way an operator, a reviewer or a robot can start work on an incident that requires
approval is tried through the CLI and the flows, on both databases, and must restore and
send nothing until `reinstate approve`; a rejection is final. The lifecycle's own rules
are tested as plain Python, and one test checks that no module outside
`reinstatement/lifecycle.py` writes an incident's status.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from typer.testing import Result

from reinstatement import incident_states, lifecycle, runner
from reinstatement.approval import Identity
from reinstatement.errors import BadInput
from reinstatement.incident_states import IncidentStatus, TransitionRefused
from reinstatement.models import AuditEntry, Case, Incident, Notice
from reinstatement.platform_schema import accounts, rule_versions
from reinstatement.states import PIPELINE_ACTOR, CaseState
from tests.factories import T0, WRONGFUL, Platform, approve, snapshot
from tests.test_cli import describe, invoke
from tests.test_steps import KEY, build_scenario, request, run_all

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_ARGS = ["--faulty", "spam@7", "--since", (T0 - timedelta(days=10)).isoformat(),
            "--until", (T0 + timedelta(days=10)).isoformat(), "--batch-size", "3"]


def run_cli(*extra: str) -> Result:
    return invoke("run", KEY, *RUN_ARGS, *extra)


def outcomes(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(select(Case.account_id, Case.outcome))
        return {row.account_id: row.outcome for row in rows}


def restored_accounts(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Case.account_id).where(
            Case.state == CaseState.RESTORED)).scalars())


def status(engine: Engine, key: str = KEY) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Incident.status).where(Incident.key == key)
                                ).scalar_one())


def a_review_case(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(Case.id).where(Case.state == CaseState.REVIEW)
                                .order_by(Case.id).limit(1)).scalar_one())


def nothing_sent(engine: Engine, outbox: str) -> bool:
    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).select_from(Notice)).scalar_one()
    return sent == 0 and not list(Path(outbox).glob("*.eml"))


def every_other_path_restores_nothing(engine: Engine, before: dict[str, object],
                                      outbox: str, refusal: str) -> None:
    """A plain run with the same and other flags, a dry run, reconcile, review, resume."""
    from flows.reinstate_incident import resume_incident

    for extra in (["--no-notify"], ["--no-require-approval"],
                  ["--require-approval", "--no-notify"]):
        result = run_cli(*extra)  # other parameters than the key was registered with
        assert result.exit_code == 2, describe(result)
        assert "other parameters" in result.stderr or refusal in result.stderr
    continue_alone = invoke("run", KEY, "--batch-size", "2")
    for result in (run_cli(), run_cli("--require-approval"), continue_alone,
                   run_cli("--require-approval", "--batch-size", "50"),
                   run_cli("--require-approval", "--dry-run")):
        assert result.exit_code in (0, 2), describe(result)
        if result.exit_code == 2:
            assert refusal in result.stderr, describe(result)
    reconciled = invoke("reconcile")
    assert reconciled.exit_code == 0, describe(reconciled)
    decided = invoke("review", "decide", str(a_review_case(engine)), "--reinstate",
                     "--reviewer", "rev_kim", "--note", "looks wrongful")
    assert decided.exit_code == 2 and refusal in decided.stderr, describe(decided)
    with pytest.raises(BadInput, match=refusal):
        resume_incident(KEY, 3)
    assert snapshot(engine) == before
    assert nothing_sent(engine, outbox)


@pytest.mark.prefect
def test_an_incident_awaiting_approval_is_restored_only_after_approve(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Declared by one person, approved by another, then the same `reinstate run` as
    before (without --require-approval) restores exactly the approved plan."""
    scenario = build_scenario(engine)
    before = snapshot(engine)
    monkeypatch.setenv("LOGNAME", "dev-declarer")
    first = run_cli("--require-approval")
    assert first.exit_code == 0, describe(first)
    assert f"incident {KEY}: awaiting_approval" in first.stdout
    assert f"reinstate approve {KEY}" in first.stdout
    previewed = outcomes(engine)
    assert previewed == {a: o for a, o in scenario.expected.items() if a in previewed}
    assert snapshot(engine) == before

    every_other_path_restores_nothing(engine, before, cli_env["REINSTATE_EMAIL_DIR"],
                                      "requires an operator's approval")
    assert status(engine) == "awaiting_approval"

    own = invoke("approve", KEY, "--note", "my own")
    assert own.exit_code == 2, describe(own)
    assert "dev-declarer declared incident" in own.stderr and "another person" in own.stderr
    monkeypatch.setenv("LOGNAME", "ops-oncall")
    shown = invoke("plan", KEY, "--json")
    plan = json.loads(shown.stdout)["plan"]
    approved = invoke("approve", KEY, "--plan", plan["short"], "--note", "samples read")
    assert approved.exit_code == 0, describe(approved)
    assert f"plan {plan['short']} approved by ops-oncall" in approved.stdout
    assert snapshot(engine) == before  # the decision alone changes nothing
    monkeypatch.setenv("LOGNAME", "dev-declarer")
    done = run_cli()  # the same declaration, without restating --require-approval
    assert done.exit_code == 0, describe(done)
    assert f"incident {KEY}: completed" in done.stdout
    assert f"approved plan {plan['short']} by ops-oncall" in done.stdout
    assert outcomes(engine) == previewed
    assert restored_accounts(engine) == {a for a, o in previewed.items() if o == "reinstated"}
    with engine.connect() as conn:
        actor, reason = conn.execute(select(AuditEntry.actor, AuditEntry.reason).where(
            AuditEntry.to_state == "approved")).one()
    assert actor == "operator:ops-oncall" and reason.endswith("samples read")
    assert plan["short"] in reason


@pytest.mark.prefect
def test_a_rejection_is_final(prefect_api: str, engine: Engine,
                              cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    build_scenario(engine)
    before = snapshot(engine)
    assert run_cli("--require-approval").exit_code == 0
    monkeypatch.setenv("LOGNAME", "ops-oncall")
    no_note = invoke("reject", KEY, "--note", " ")
    assert no_note.exit_code == 2 and "a note saying why" in no_note.stderr, describe(no_note)
    rejected = invoke("reject", KEY, "--note", "rule fixed")
    assert rejected.exit_code == 0, describe(rejected)
    assert "rejected by ops-oncall: rule fixed" in rejected.stdout

    every_other_path_restores_nothing(engine, before, cli_env["REINSTATE_EMAIL_DIR"],
                                      "rejected by ops-oncall: rule fixed")
    monkeypatch.setenv("LOGNAME", "someone-else")
    again = invoke("approve", KEY)
    assert again.exit_code == 2 and "rejected by ops-oncall" in again.stderr, describe(again)
    report = invoke("report", KEY)
    assert f"incident {KEY}: rejected" in report.stdout, describe(report)
    assert status(engine) == "rejected"
    assert snapshot(engine) == before


@pytest.mark.prefect
def test_a_run_killed_during_verify_is_not_resumed_without_approval(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    from flows.reconcile import nightly_reconciliation

    build_scenario(engine)
    before = snapshot(engine)
    # What a run killed during verification leaves: registered, planned, partly verified.
    incident = runner.register(engine, request(require_approval=True), PIPELINE_ACTOR)
    ctx = runner.StepContext(engine, incident, 3)
    runner.plan_all(ctx)
    assert runner.verify_one_batch(ctx, preview=False).cases == 3
    findings = nightly_reconciliation()
    assert findings["resumed"] == []
    assert status(engine) == "registered"
    assert snapshot(engine) == before
    assert nothing_sent(engine, cli_env["REINSTATE_EMAIL_DIR"])


def test_approve_and_reject_refuse_unknown_keys_and_incidents_not_awaiting(
    engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    unknown = invoke("approve", "INC-NOPE", "--operator", "ops")
    assert unknown.exit_code == 2 and "no incident registered" in unknown.stderr
    run_all(engine, request(), restore=False)  # no approval needed: it is running
    for words in (["approve", KEY, "--operator", "ops"],
                  ["reject", KEY, "--operator", "ops", "--note", "no"]):
        result = invoke(*words)
        assert result.exit_code == 2, describe(result)
        assert "is not awaiting approval (it is running)" in result.stderr
    assert status(engine) == "running"


# -- the lifecycle's rules, as plain Python ---------------------------------------------

def audit_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.case_id.is_(None))).scalar_one())


@pytest.mark.parametrize("require_approval", [True, False])
def test_only_the_allowed_transitions_happen_and_each_is_audited(
    engine: Engine, require_approval: bool
) -> None:
    build_scenario(engine)
    incident = runner.register(engine, request(require_approval=require_approval),
                               PIPELINE_ACTOR)
    S = IncidentStatus
    for source, targets in incident_states.ALLOWED.items():
        for target in S:
            if target in targets:
                continue
            with engine.begin() as conn:
                conn.execute(update(Incident).values(status=str(source)))
            audits = audit_count(engine)
            with pytest.raises(TransitionRefused), engine.begin() as conn:
                lifecycle.transition(conn, incident.id, target, "tester", "try")
            assert status(engine) == source, (source, target)
            assert audit_count(engine) == audits

    with engine.begin() as conn:
        conn.execute(update(Incident).values(status="registered"))
    if require_approval:
        with pytest.raises(TransitionRefused, match="requires an operator's approval"):
            runner.change(engine, incident, S.RUNNING, "tester", "skip approval")
        runner.run_without_prefect(engine, request(require_approval=True))
        assert status(engine) == "awaiting_approval"
        with pytest.raises(TransitionRefused, match="only by a decision on its newest plan"):
            runner.change(engine, incident, S.APPROVED, "tester", "no decision")
        ops = Identity("ops", "cli")
        with pytest.raises(TransitionRefused, match="an operator's name"):
            runner.decide(engine, incident, "approve", Identity(" ", "cli"))
        with pytest.raises(TransitionRefused, match="a note saying why"):
            runner.decide(engine, incident, "reject", ops)
        state, plan = runner.decide(engine, incident, "approve", ops, note="fine")
        assert state.approved and state.status == S.APPROVED
        assert state.decision is not None
        assert (state.decision.by, state.decision.note, state.decision.plan_id) == (
            "ops", "fine", plan.id)
    state = runner.change(engine, incident, S.RUNNING, "flow-run:2", "a real run began")
    assert state.may_restore()
    with engine.connect() as conn:
        last = conn.execute(select(AuditEntry.from_state, AuditEntry.to_state,
                                   AuditEntry.actor, AuditEntry.reason)
                            .order_by(AuditEntry.id.desc()).limit(1)).one()
    assert tuple(last) == ("approved" if require_approval else "registered", "running",
                           "flow-run:2", "a real run began")


def test_a_restore_is_refused_in_its_own_transaction_while_not_approved(
    engine: Engine
) -> None:
    build_scenario(engine)
    before = snapshot(engine)
    run_all(engine, request(require_approval=True))
    assert status(engine) == "awaiting_approval"
    with engine.connect() as conn:
        from reinstatement.incidents import load_incident

        ctx = runner.StepContext(engine, load_incident(conn, KEY), 3)
    with pytest.raises(runner.RestoreNotAllowed, match="awaiting approval"):
        runner.restore_one_batch(ctx)
    with pytest.raises(runner.RestoreNotAllowed):
        runner.restore_cases(ctx, [a_review_case(engine)])
    assert snapshot(engine) == before


# -- planning finds every candidate -----------------------------------------------------

def faulty_spam(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(rule_versions.c.id).where(
            rule_versions.c.rule_name == "spam", rule_versions.c.version == 7)).scalar_one())


def ban_now(engine: Engine, account_id: int) -> None:
    faulty = faulty_spam(engine)
    with engine.begin() as conn:
        Platform(conn).ban(account_id, faulty, WRONGFUL)
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(status="banned"))


def test_bans_after_a_dry_run_on_lower_ids_are_reinstated_by_the_real_run(
    engine: Engine
) -> None:
    with engine.begin() as conn:
        early = Platform(conn).account(status="active")  # a lower id than any candidate
    scenario = build_scenario(engine)
    run_all(engine, request(dry_run=True, notify=False))
    assert early not in outcomes(engine)
    ban_now(engine, early)
    run_all(engine, request(notify=False))
    expected = {a for a, o in scenario.expected.items() if o == "reinstated"} | {early}
    assert restored_accounts(engine) == expected
    assert status(engine) == "completed"


def test_candidates_found_after_the_approval_go_back_to_the_operator(
    engine: Engine
) -> None:
    with engine.begin() as conn:
        early = Platform(conn).account(status="active")
    build_scenario(engine)
    run_all(engine, request(require_approval=True))
    approve(engine, KEY)
    ban_now(engine, early)
    before = snapshot(engine)
    state = runner.run_without_prefect(engine, request(require_approval=True))
    assert state.status == IncidentStatus.AWAITING_APPROVAL and not state.approved
    assert snapshot(engine) == before  # the new candidate, and the rest, wait
    assert outcomes(engine)[early] == "reinstated"  # verified, shown in the new preview


# -- one writer of the status -----------------------------------------------------------

WRITES_STATUS = [
    re.compile(r"update\(\s*Incident\b"),  # UPDATE through the model
    re.compile(r"update\s+reinstatement_incidents\b", re.IGNORECASE),  # or in SQL text
    re.compile(r"insert\(\s*Incident\s*\)[^\n]*\n?[^\n]*status\s*="),  # a status at insert
    re.compile(r"Incident\.__table__"),
]


def test_no_module_but_the_lifecycle_writes_an_incident_status() -> None:
    offenders = []
    for folder in ("reinstatement", "flows", "tasks", "deployments", "sql"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".sql") or "migrations" in path.parts:
                continue
            if path == PROJECT_ROOT / "reinstatement" / "lifecycle.py":
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(PROJECT_ROOT)}: {m.group(0)!r}"
                          for pattern in WRITES_STATUS for m in pattern.finditer(text)]
    assert offenders == []
    # And the lifecycle itself is what the checks look for.
    assert WRITES_STATUS[0].search(
        (PROJECT_ROOT / "reinstatement" / "lifecycle.py").read_text(encoding="utf-8"))


def test_completed_means_every_notice_is_settled(engine: Engine, tmp_path: Path) -> None:
    from reinstatement import outbox
    from reinstatement.incidents import load_incident
    from reinstatement.notices.backends import FileBackend
    from reinstatement.notices.render import NoticeRenderer

    build_scenario(engine)
    state = runner.run_without_prefect(engine, request())  # restored; notices still queued
    assert state.status == IncidentStatus.RUNNING
    with engine.connect() as conn:
        incident = load_incident(conn, KEY)
    assert not runner.complete_if_done(engine, incident, PIPELINE_ACTOR)
    sent = outbox.send_batch(engine, FileBackend(tmp_path), NoticeRenderer(), 100,
                             sender="T&S <ts@example.com>", lease=timedelta(minutes=5))
    assert sent.sent > 0
    assert runner.complete_if_done(engine, incident, PIPELINE_ACTOR)
    assert status(engine) == "completed"
