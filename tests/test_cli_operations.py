"""The operators' commands: `reinstate review list|decide` and `reinstate reconcile`."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner, Result

from commands.reinstate import app
from reinstatement.models import Case
from tests.factories import snapshot
from tests.test_steps import KEY, build_scenario, request, run_all


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_review_list_shows_the_waiting_cases(engine: Engine, cli_env: dict[str, str]) -> None:
    scenario = build_scenario(engine)
    run_all(engine, request())
    result = invoke("review", "list", KEY, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["account_id"] for r in rows} == {
        a for a, o in scenario.expected.items() if o == "needs_review"}
    assert all(r["why"].startswith("needs review:") for r in rows)
    text = invoke("review", "list")
    assert text.exit_code == 0 and KEY in text.stdout


def test_review_decide_reinstates_one_case(engine: Engine, cli_env: dict[str, str]) -> None:
    build_scenario(engine)
    run_all(engine, request())
    with engine.connect() as conn:
        case_id = conn.execute(select(Case.id).where(Case.state == "review")).scalars().first()
    result = invoke("review", "decide", str(case_id), "--reinstate", "--reviewer", "rev-ana",
                    "--note", "the signal was lost in transit")
    assert result.exit_code == 0, result.output
    assert "reinstated (restored)" in result.stdout
    assert "notice: sent 1" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--reinstate", "--uphold"], "exactly one of --reinstate or --uphold"),
    ([], "exactly one of --reinstate or --uphold"),
    (["--uphold", "--note", " "], "--note"),
])
def test_review_decide_refuses_bad_input_and_changes_nothing(
    engine: Engine, cli_env: dict[str, str], args: list[str], message: str
) -> None:
    build_scenario(engine)
    run_all(engine, request())
    with engine.connect() as conn:
        case_id = conn.execute(select(Case.id).where(Case.state == "review")).scalars().first()
    before = snapshot(engine)
    full = ["review", "decide", str(case_id), "--reviewer", "rev"]
    if "--note" not in args:
        full += ["--note", "why"]
    result = invoke(*full, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert snapshot(engine) == before


def test_review_of_unknown_things_is_bad_input(engine: Engine, cli_env: dict[str, str]) -> None:
    assert invoke("review", "list", "NOSUCH").exit_code == 2
    result = invoke("review", "decide", "424242", "--uphold", "--reviewer", "r", "--note", "n")
    assert result.exit_code == 2 and "no case 424242" in result.stderr


@pytest.mark.prefect
def test_reconcile_dry_run_reports_and_changes_nothing(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    build_scenario(engine)
    run_all(engine, request(), restore=False)
    before = snapshot(engine)
    result = invoke("reconcile", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"incidents resumed: {KEY}" in result.stdout
    assert snapshot(engine) == before
    result = invoke("reconcile", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["resumed"] == [KEY]
