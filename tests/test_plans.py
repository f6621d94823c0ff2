"""An approval approves a plan: nothing unseen is restored, by any path, on both databases.

A plan is the exact set of cases a preview showed, named by its digest. These tests try
each way something the operator did not see could be restored: a dry run between the
approval and the real run, a run killed after planning committed a new candidate (then
another run, or the nightly reconciliation), a review of a case the approved plan does not
hold. Each leaves the new account banned and the incident awaiting approval of a new plan
that holds it; approving that plan restores it, and what was restored before stays
restored, reversed by one unban. (The Prefect UI's resume after new candidates appear is
in tests/test_deployments.py; what the pipeline's own role can and cannot do, in
tests/test_security.py.)
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from typer.testing import Result

from reinstatement import plan_records, plans, runner
from reinstatement.incident_states import IncidentStatus
from reinstatement.incidents import load_incident
from reinstatement.lifecycle import state_by_key
from reinstatement.models import Case, Decision, Incident, Plan, PlanCase
from reinstatement.platform_schema import accounts, enforcement_actions
from reinstatement.states import PIPELINE_ACTOR
from tests.factories import T0, UNCERTAIN, WRONGFUL, Platform, approve, snapshot
from tests.test_cli import describe, invoke
from tests.test_steps import KEY, build_scenario, request, run_all

RUN_ARGS = ["--faulty", "spam@7", "--since", (T0 - timedelta(days=10)).isoformat(),
            "--until", (T0 + timedelta(days=10)).isoformat(), "--batch-size", "3"]
DECLARER, APPROVER = "dev-declarer", "ops-oncall"


def run_cli(*extra: str) -> Result:
    return invoke("run", KEY, *RUN_ARGS, *extra)


def as_person(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The command line's person is the OS login (no database role of their own here)."""
    monkeypatch.setenv("LOGNAME", name)


def newly_banned(engine: Engine, evidence: Any = WRONGFUL) -> int:
    """An account banned now by the incident's faulty version inside its window."""
    with engine.begin() as conn:
        platform = Platform(conn)
        faulty = conn.execute(text(
            "SELECT id FROM rule_versions WHERE rule_name = 'spam' AND version = 7")
        ).scalar_one()
        account = platform.account()
        platform.pin(account, hidden_by=platform.ban(account, faulty, evidence))
    return account


def account_status(engine: Engine, account_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(accounts.c.status).where(accounts.c.id == account_id)
                                ).scalar_one())


def unbans(engine: Engine) -> dict[int, int]:
    """Unban actions the pipeline wrote, per account."""
    ea = enforcement_actions
    with engine.connect() as conn:
        return dict(conn.execute(select(ea.c.account_id, func.count()).where(
            ea.c.kind == "unban", ea.c.source == "reinstatement").group_by(ea.c.account_id)
        ).all())


def newest(engine: Engine) -> Any:
    with engine.connect() as conn:
        return state_by_key(conn, KEY)


def held(engine: Engine, plan_id: int) -> dict[int, str]:
    """What a plan holds: account -> verdict."""
    with engine.connect() as conn:
        return dict(conn.execute(select(PlanCase.account_id, PlanCase.verdict).where(
            PlanCase.plan_id == plan_id)).all())


def reinstated_by_plan(engine: Engine, plan_id: int) -> set[int]:
    return {a for a, verdict in held(engine, plan_id).items() if verdict == "reinstated"}


def approve_cli(monkeypatch: pytest.MonkeyPatch, *extra: str) -> Result:
    as_person(monkeypatch, APPROVER)
    result = invoke("approve", KEY, "--note", "plan read", *extra)
    as_person(monkeypatch, DECLARER)
    return result


def first_plan_restored(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Declared with approval, its first plan approved by another person and restored:
    the accounts restored."""
    as_person(monkeypatch, DECLARER)
    assert run_cli("--require-approval").exit_code == 0
    first = newest(engine).plan
    assert approve_cli(monkeypatch).exit_code == 0
    done = run_cli()
    assert done.exit_code == 0 and f"incident {KEY}: completed" in done.stdout, describe(done)
    restored = reinstated_by_plan(engine, first.id)
    assert restored and {a for a in restored if account_status(engine, a) == "active"} == \
        restored
    return restored


def assert_waits_for_a_plan_holding(engine: Engine, account_id: int, before: Any) -> Any:
    """The account is still banned; the incident awaits approval of a new plan holding it
    as a reinstatement; nobody decided on that plan."""
    state = newest(engine)
    assert state.status == IncidentStatus.AWAITING_APPROVAL, state
    assert state.plan is not None and state.plan.decision is None
    assert state.plan.id != before.id
    assert held(engine, state.plan.id)[account_id] == "reinstated"
    assert account_status(engine, account_id) == "banned"
    return state.plan


def approve_and_restore(engine: Engine, monkeypatch: pytest.MonkeyPatch, account_id: int,
                        restored_before: set[int]) -> None:
    """Approving the new plan restores the account; what was restored before stays so,
    with its one unban."""
    assert approve_cli(monkeypatch).exit_code == 0
    done = run_cli()
    assert done.exit_code == 0 and f"incident {KEY}: completed" in done.stdout, describe(done)
    assert account_status(engine, account_id) == "active"
    assert all(account_status(engine, a) == "active" for a in restored_before)
    assert all(n == 1 for n in unbans(engine).values()), unbans(engine)
    assert restored_before | {account_id} <= set(unbans(engine))


@pytest.mark.prefect
def test_a_dry_run_between_the_approval_and_the_run_restores_nothing_unseen(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build_scenario(engine)
    as_person(monkeypatch, DECLARER)
    assert run_cli("--require-approval").exit_code == 0
    approved = newest(engine).plan
    assert approve_cli(monkeypatch).exit_code == 0
    newcomer = newly_banned(engine)
    before = snapshot(engine)

    dry = run_cli("--dry-run")
    assert dry.exit_code == 0, describe(dry)
    assert snapshot(engine) == before
    plan = assert_waits_for_a_plan_holding(engine, newcomer, approved)
    for again in (run_cli(), invoke("run", KEY), invoke("reconcile")):
        assert again.exit_code == 0, describe(again)
    assert snapshot(engine) == before  # nothing restored: the approved plan is superseded
    assert newest(engine).plan.id == plan.id  # the same judgement: the same plan
    stale = approve_cli(monkeypatch, "--plan", approved.short)
    assert stale.exit_code == 2 and "superseded by plan" in stale.stderr, describe(stale)

    approve_and_restore(engine, monkeypatch, newcomer, set())
    restored = reinstated_by_plan(engine, plan.id)
    assert set(unbans(engine)) == restored  # exactly the approved plan's reinstatements


@pytest.mark.prefect
@pytest.mark.parametrize("next_run", ["run", "reconcile"])
def test_a_run_killed_after_planning_a_new_candidate_restores_nothing_unseen(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, next_run: str,
) -> None:
    """What a run of an approved incident killed after planning leaves: the new
    candidate's case committed, no plan made for it. The next run, or the nightly
    reconciliation, finds the plan changed and asks the operator again."""
    build_scenario(engine)
    restored = first_plan_restored(engine, monkeypatch)
    approved = newest(engine).plan
    newcomer = newly_banned(engine)
    with engine.connect() as conn:
        incident = load_incident(conn, KEY)
    assert runner.begin_real_run(engine, incident, PIPELINE_ACTOR).status == "completed"
    assert runner.plan_all(runner.StepContext(engine, incident, 3)) == 1
    # planning found work: the run goes on (and a crash after this leaves it running)
    assert runner.begin_real_run(engine, incident, PIPELINE_ACTOR).status == "running"
    ctx = runner.StepContext(engine, incident, 3)
    assert runner.verify_one_batch(ctx, preview=False).cases == 1  # verified: restorable?
    assert runner.restore_one_batch(ctx).cases == 0  # not by the approved plan
    before = snapshot(engine)

    after = run_cli() if next_run == "run" else invoke("reconcile")
    assert after.exit_code == 0, describe(after)
    assert snapshot(engine) == before
    assert_waits_for_a_plan_holding(engine, newcomer, approved)
    approve_and_restore(engine, monkeypatch, newcomer, restored)


@pytest.mark.prefect
def test_a_reviewer_restores_only_a_case_the_approved_plan_holds_for_review(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build_scenario(engine)
    first_plan_restored(engine, monkeypatch)
    plan = newest(engine).plan
    in_review = [a for a, verdict in held(engine, plan.id).items() if verdict == "needs_review"]
    late = newly_banned(engine, UNCERTAIN)  # uncertain too, but after the approval
    with engine.connect() as conn:
        incident = load_incident(conn, KEY)
    ctx = runner.StepContext(engine, incident, 3)  # a run killed after verifying
    runner.plan_all(ctx)
    runner.begin_real_run(engine, incident, PIPELINE_ACTOR)
    while runner.verify_one_batch(ctx, preview=False).cases:
        pass
    assert newest(engine).approved  # no plan was made after the new case: still approved
    with engine.connect() as conn:
        case_of = dict(conn.execute(select(Case.account_id, Case.id)).all())
    refused = invoke("review", "decide", str(case_of[late]), "--reinstate", "--reviewer",
                     "rev_kim", "--note", "looks wrongful")
    assert refused.exit_code == 2, describe(refused)
    assert f"case {case_of[late]} is not in incident {KEY}'s approved plan" in refused.stderr
    assert account_status(engine, late) == "banned"

    # The account the approved plan holds for review: restored on a reviewer's word.
    decided = invoke("review", "decide", str(case_of[in_review[0]]), "--reinstate",
                     "--reviewer", "rev_kim", "--note", "looks wrongful")
    assert decided.exit_code == 0, describe(decided)
    assert account_status(engine, in_review[0]) == "active"
    # A review is not a new judgement: the plan that follows holds the late case, and the
    # reviewed one as it was.
    assert run_cli().exit_code == 0
    after = newest(engine)
    assert after.status == IncidentStatus.AWAITING_APPROVAL and after.plan.id != plan.id
    assert held(engine, after.plan.id)[in_review[0]] == "needs_review"
    assert held(engine, after.plan.id)[late] == "needs_review"
    assert approve_cli(monkeypatch).exit_code == 0
    assert run_cli().exit_code == 0
    decided = invoke("review", "decide", str(case_of[late]), "--reinstate", "--reviewer",
                     "rev_kim", "--note", "looks wrongful")
    assert decided.exit_code == 0, describe(decided)
    assert account_status(engine, late) == "active"
    assert run_cli().exit_code == 0
    assert newest(engine).plan.id == after.plan.id and newest(engine).approved


@pytest.mark.parametrize("faulty, why", [
    ("abuse@2", "abuse@2 is not marked faulty by the platform (its status is 'active')"),
    ("spam@6", "spam@6 is not marked faulty by the platform (its status is 'retired')"),
    ("spam@7=spam@6", "spam@6 cannot correct spam@7: a corrected version is a newer "
                      "version of the same rule"),
])
def test_an_incident_names_only_versions_the_platform_marks_faulty(
    engine: Engine, cli_env: dict[str, str], faulty: str, why: str
) -> None:
    """A real run restores only from versions the platform marks 'faulty' (a dry run may
    preview any version: tests/test_detection.py previews a suspect)."""
    build_scenario(engine)
    before = snapshot(engine)
    result = invoke("run", KEY, "--faulty", faulty)
    assert result.exit_code == 2, describe(result)
    assert result.stderr.startswith(f"error: {why}"), describe(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Incident)).scalar_one() == 0


def test_the_corrected_version_by_default_is_a_newer_active_one(engine: Engine) -> None:
    """Rolled back to an older active version: that one does not correct the faulty one,
    so its bans are uncertain and go to review (the protective reading)."""
    with engine.begin() as conn:
        p = Platform(conn)
        p.rule("roll", 1, "active", {"signal": "links", "op": ">=", "value": 50})
        faulty = p.rule("roll", 2, "faulty", {"signal": "links", "op": ">=", "value": 1})
        account = p.account()
        p.ban(account, faulty, WRONGFUL)
    run_all(engine, request(faulty_versions=["roll@2"]))
    with engine.connect() as conn:
        outcome = conn.execute(select(Case.outcome)).scalar_one()
    assert outcome == "needs_review"
    assert account_status(engine, account) == "banned"


def test_a_plan_is_what_was_judged_and_keeps_its_digest_until_the_judgement_changes(
    engine: Engine,
) -> None:
    """The digest is the same in SQL and in Python; restoring a plan's cases and deciding a
    review change nothing in it, a new case does."""
    build_scenario(engine)
    approval_needed = request(require_approval=True, notify=False)
    run_all(engine, approval_needed)
    state = newest(engine)
    plan = state.plan
    with engine.connect() as conn:
        entries = list(plan_records.plan_entries(conn, plan.id))
        assert plan_records.stored_digest(conn, plan.id, KEY) == plan.digest
        assert conn.execute(select(func.count()).select_from(Case)).scalar_one() == len(
            entries) == plan.cases
    assert plans.plan_digest(KEY, entries) == plan.digest
    assert [e.case_id for e in entries] == sorted(e.case_id for e in entries)
    assert all(bool(e.ban_ids) == (e.verdict in plans.RESTORING_VERDICTS) for e in entries)
    approve(engine, KEY)
    run_all(engine, approval_needed)
    assert newest(engine).status == IncidentStatus.COMPLETED
    assert newest(engine).plan.id == plan.id  # restored: the same plan
    newly_banned(engine)
    run_all(engine, approval_needed)
    assert newest(engine).plan.id != plan.id
    assert newest(engine).status == IncidentStatus.AWAITING_APPROVAL


def test_a_new_plan_unapproves_the_incident_and_restores_stop_in_their_transaction(
    engine: Engine,
) -> None:
    """A restore batch reads the answer in its own transaction: once a newer plan exists,
    the approved one restores nothing more, whichever run asks."""
    build_scenario(engine)
    run_all(engine, request(require_approval=True))
    approve(engine, KEY)
    with engine.connect() as conn:
        incident = load_incident(conn, KEY)
    runner.begin_real_run(engine, incident, PIPELINE_ACTOR)
    newly_banned(engine)
    ctx = runner.StepContext(engine, incident, 3)
    runner.plan_all(ctx)
    while runner.verify_one_batch(ctx, preview=False).cases:
        pass
    runner.settle_plan(engine, incident, PIPELINE_ACTOR, dry_run=False)
    before = snapshot(engine)
    with pytest.raises(runner.RestoreNotAllowed, match="awaiting approval"):
        runner.restore_one_batch(ctx)
    assert snapshot(engine) == before


@pytest.mark.prefect
def test_approve_shows_the_plan_and_plan_prints_it(
    prefect_api: str, engine: Engine, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = build_scenario(engine)
    as_person(monkeypatch, DECLARER)
    assert run_cli("--require-approval").exit_code == 0
    shown = invoke("plan", KEY, "--json")
    assert shown.exit_code == 0, describe(shown)
    report = json.loads(shown.stdout)
    plan = report["plan"]
    assert report["status"] == "awaiting_approval" and plan["state"] == "awaiting approval"
    assert report["declared_by"] == f"{DECLARER} (OS login on the command line)"
    assert sum(plan["counts"].values()) == plan["cases"] == len(scenario.expected)
    assert plan["counts"]["reinstated"] == 3
    listed = invoke("plan", KEY, "--cases", "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()[1:]]
    assert len(entries) == plan["cases"]
    assert {e["verdict"] for e in entries} >= {"reinstated", "upheld", "needs_review"}
    for bad, words in (("nothex", "has no plan"), ("0" * 12, "has no plan")):
        refused = approve_cli(monkeypatch, "--plan", bad)
        assert refused.exit_code == 2 and words in refused.stderr, describe(refused)
    approved = approve_cli(monkeypatch, "--plan", plan["digest"])
    assert approved.exit_code == 0, describe(approved)
    assert f"newest plan {plan['short']} ({plan['digest']})" in approved.stdout
    assert f"plan {plan['short']} approved by {APPROVER}" in approved.stdout
    twice = approve_cli(monkeypatch)
    assert twice.exit_code == 2 and "not awaiting approval" in twice.stderr
    text_report = invoke("report", KEY)
    assert f"declared by {DECLARER}" in text_report.stdout
    assert f"plan {plan['short']}" in text_report.stdout
    assert f"approved plan {plan['short']} by {APPROVER}" in text_report.stdout
    with engine.connect() as conn:
        decision = conn.execute(select(Decision)).one()
        assert (decision.decided_by, decision.decided_via, decision.plan_id) == (
            APPROVER, "cli", plan["id"])
        assert conn.execute(select(Plan.digest)).scalar_one() == plan["digest"]


def test_the_natural_commands_continue_a_registered_incident(
    engine: Engine, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restating --require-approval the other way is refused; leaving it out, or the whole
    declaration, takes the registered incident as it is."""
    from reinstatement.incidents import registered_parameters

    build_scenario(engine)
    run_all(engine, request(require_approval=True), restore=False)
    other_way = run_cli("--no-require-approval")
    assert other_way.exit_code == 2 and "require_approval: registered true" in other_way.stderr
    with engine.connect() as conn:
        registered = registered_parameters(conn, KEY)
    assert registered is not None and registered["require_approval"] is True
    never = invoke("run", "INC-NEVER-DECLARED", "--dry-run")
    assert never.exit_code == 2 and "declare it with --faulty" in never.stderr
