"""Evidence the platform really holds: poisoned values and exact decimals, on both databases.

The evidence column is JSON; PostgreSQL's `json` keeps whatever text the rules engine
wrote, including an integer of 5,000 digits, 5,000 levels of nesting and `1e309`, which a
plain `json.loads` refuses or turns into floats. Each such value must send its case to
review with a reason naming the problem, never stop the batch, and decimals must compare
exactly.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from reinstatement import runner
from reinstatement.conditions import decode_evidence, evaluate, parse_condition
from reinstatement.models import Case
from reinstatement.states import PIPELINE_ACTOR
from tests.factories import T0, Platform, snapshot
from tests.test_steps import KEY, request

CORRECTED = {"signal": "score", "op": ">", "value": 100}
HUGE = "9" * 5000
DEEP = "[" * 5000 + "]" * 5000
# evidence JSON text -> the outcome the contract asks for, and the reason it names
CASES = {
    '{"score": 50}': ("reinstated", None),
    '{"score": 150}': ("upheld", None),
    '{"score": 100.00000000000000001}': ("upheld", None),  # a float would make it 100
    '{"score": 99.999999999999999999}': ("reinstated", None),
    '{"score": 100.0}': ("reinstated", None),  # 100.0 > 100 is false: the same number
    f'{{"score": {HUGE}}}': ("needs_review", "score number_out_of_range"),
    f'{{"score": -{HUGE}}}': ("needs_review", "score number_out_of_range"),
    '{"score": 1e309}': ("needs_review", "score number_out_of_range"),
    f'{{"score": {DEEP}}}': ("needs_review", "score evidence_nested_too_deep"),
    f'{{"score": 1, "junk": {DEEP}}}': ("needs_review", "score evidence_nested_too_deep"),
    # a key written twice: SQLite's JSON read the first, PostgreSQL's and Python's the last
    '{"score": 50, "score": 150}': ("needs_review", "score duplicate_key"),
    '{"score": 150, "\\u0073core": 50}': ("needs_review", "score duplicate_key"),
    '{"score": 50, "other": 1, "other": 2}': ("reinstated", None),  # not a signal read
    # 17,000 digits after the point: beyond PostgreSQL's numeric, which failed the batch
    '{"score": 1.' + "1" * 17_000 + '}': ("needs_review", "score evidence_unreadable"),
    '{"score": 50, "x": 0.' + "0" * 6384 + '1e-9999}': ("needs_review",
                                                       "score evidence_unreadable"),
}


def seed_hostile(engine: Engine) -> dict[int, tuple[str, str | None]]:
    """One banned account per evidence text; returns account id -> expected (outcome, why)."""
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", {"signal": "score", "op": ">", "value": 10})
        p.rule("spam", 8, "active", CORRECTED)
        expected = {}
        for evidence, outcome in CASES.items():
            account = p.account()
            ban = p.ban(account, faulty, None)
            # Written as text, as the rules engine's own client would: SQLAlchemy's JSON
            # serialiser could not even produce some of these values.
            cast = "CAST(:evidence AS JSON)" if conn.dialect.name == "postgresql" else ":evidence"
            conn.execute(text(f"UPDATE enforcement_actions SET evidence = {cast} WHERE id = :id"),
                         {"evidence": evidence, "id": ban})
            expected[account] = outcome
    return expected


def judged(engine: Engine) -> dict[int, tuple[str | None, str]]:
    with engine.connect() as conn:
        return {row.account_id: (row.outcome, (row.reasons or {}).get("summary", ""))
                for row in conn.execute(select(Case.account_id, Case.outcome, Case.reasons))}


@pytest.mark.parametrize("batch_size", [1, 50])
def test_poisoned_evidence_goes_to_review_and_decimals_compare_exactly(
    engine: Engine, batch_size: int
) -> None:
    expected = seed_hostile(engine)
    state = runner.run_without_prefect(engine, request(
        faulty_versions=["spam@7"], since=T0 - timedelta(days=1),
        until=T0 + timedelta(days=1), batch_size=batch_size, notify=False), PIPELINE_ACTOR)
    assert state.status == "completed"
    got = judged(engine)
    for account, (outcome, why) in expected.items():
        assert got[account][0] == outcome, (account, got[account])
        if why is not None:
            assert why in got[account][1], got[account]


@pytest.mark.prefect
def test_the_nightly_reconciliation_completes_over_poisoned_rows(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    from flows.reconcile import nightly_reconciliation

    seed_hostile(engine)
    runner.run_without_prefect(engine, request(
        faulty_versions=["spam@7"], since=T0 - timedelta(days=1),
        until=T0 + timedelta(days=1)), PIPELINE_ACTOR)
    before = snapshot(engine)
    findings = nightly_reconciliation()
    assert findings["invariants"]["unrepaired"] == 0
    assert findings["resumed"] == []
    assert snapshot(engine) == before
    assert KEY  # the scenario's incident


# -- decoding, through each database's JSON type ----------------------------------------

_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=12,
                min_value=Decimal("-1e12"), max_value=Decimal("1e12")),
)
# Text without NUL or lone surrogates: evidence holding those is unreadable by design
# (PostgreSQL's jsonb cannot hold them), which tests/test_condition_sql.py checks on both databases.
_texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                 max_size=8)
_values = st.one_of(st.none(), st.booleans(), _texts, _numbers)
_evidence = st.dictionaries(st.sampled_from(["a", "b", "c"]), _values, max_size=3)
_conditions = st.builds(
    lambda signal, op, value: {"signal": signal, "op": op, "value": value},
    st.sampled_from(["a", "b", "c"]), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
    st.one_of(st.booleans(), _texts.map(lambda t: t[:4]), _numbers),
)


def _json_text(evidence: dict[str, object]) -> str:
    """Evidence as the rules engine writes it: decimals in full, never through a float."""
    def encode(value: object) -> str:
        if isinstance(value, Decimal):
            return format(value, "f")
        return json.dumps(value)
    return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in evidence.items()) + "}"


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evidence=_evidence, condition=_conditions)
def test_evidence_read_back_from_the_database_judges_as_written(
    engine: Engine, evidence: dict[str, object], condition: dict[str, object]
) -> None:
    with engine.connect() as conn:
        cast = "CAST(CAST(:t AS JSON) AS TEXT)" if conn.dialect.name == "postgresql" \
            else "CAST(json(:t) AS TEXT)"
        stored = conn.execute(text(f"SELECT {cast}"), {"t": _json_text(evidence)}).scalar_one()
    parsed = parse_condition(condition)
    assert evaluate(parsed, decode_evidence(stored)) == evaluate(parsed, evidence)


# -- what an incident names: refused at registration, or judged ------------------------

@pytest.mark.parametrize("value, why", [
    ('"tr\\u0000ue"', "holds a NUL character"),
    ('"\\ud800"', "holds a lone surrogate"),
    ("1e-16384", "has more than 16,383 digits after the decimal point"),
])
def test_a_correction_no_database_can_judge_is_refused_at_registration(
    engine: Engine, cli_env: dict[str, str], value: str, why: str
) -> None:
    from reinstatement.models import Incident
    from tests.test_cli import describe, invoke

    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", {"signal": "score", "op": ">", "value": 10})
        corrected = p.rule("spam", 8, "active", {"all": []})
        condition = ('{"any": [{"signal": "score", "op": ">", "value": 100}, '
                     f'{{"signal": "note", "op": "in", "value": ["ok", {value}]}}]}}')
        cast = "CAST(:c AS JSON)" if conn.dialect.name == "postgresql" else ":c"
        conn.execute(text(f"UPDATE rule_versions SET condition = {cast} WHERE id = :id"),
                     {"c": condition, "id": corrected})
        p.ban(p.account(), faulty, {"score": 50})
    before = snapshot(engine)
    result = invoke("run", KEY, "--faulty", "spam@7", "--dry-run")
    assert result.exit_code == 2, describe(result)
    assert result.stderr.startswith(
        f"error: spam@8: condition.any[1].value[1]: {why}"), describe(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(Incident.id)).first() is None


@pytest.mark.prefect
def test_an_incident_naming_only_a_version_with_no_correction_goes_to_review(
    prefect_api: str, engine: Engine, cli_env: dict[str, str]
) -> None:
    """link_farm@1 has no newer active version: its bans are uncertain, on both databases
    (PostgreSQL once failed the statement on an untyped NULL)."""
    from reinstatement.seed import RULE_ID, SeedOptions, seed
    from tests.test_cli import describe, invoke

    seed(engine, SeedOptions(accounts=300, seed=5))
    with engine.begin() as conn:  # (the seed's link_farm@1 bans all stand beside others)
        p = Platform(conn)
        alone = p.account()
        p.ban(alone, RULE_ID["link_farm@1"], {"outbound_domains": 1})
    before = snapshot(engine)
    result = invoke("run", "INC-X", "--faulty", "link_farm@1", "--dry-run")
    assert result.exit_code == 0, describe(result)
    with engine.connect() as conn:
        outcomes = dict(conn.execute(select(Case.account_id, Case.outcome)).all())
    assert outcomes[alone] == "needs_review"
    assert set(outcomes.values()) == {"needs_review", "kept_other_ban"}, outcomes
    assert snapshot(engine) == before


@pytest.mark.slow
@pytest.mark.prefect
def test_an_accounts_file_of_100000_ids_runs(
    prefect_api: str, engine: Engine, cli_env: dict[str, str], tmp_path: object
) -> None:
    """100,000 ids (a flow run's parameters stop at 512 KB, about 76,500 ids): the list
    goes to the database, the run names it, and every listed id gets its case."""
    from pathlib import Path

    from reinstatement.models import IncidentAccount
    from tests.test_cli import describe, invoke

    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("spam", 7, "faulty", {"signal": "score", "op": ">", "value": 10})
        p.rule("spam", 8, "active", CORRECTED)
        wrongly = p.account()
        p.ban(wrongly, faulty, {"score": 50})
    listed = Path(str(tmp_path)) / "ids.txt"
    listed.write_text("".join(f"{i}\n" for i in range(1, 100_001)), encoding="utf-8")
    result = invoke("run", KEY, "--faulty", "spam@7", "--accounts-file", str(listed),
                    "--dry-run", "--batch-size", "20000")
    assert result.exit_code == 0, describe(result)
    with engine.connect() as conn:
        assert conn.execute(select(text("count(*)")).select_from(IncidentAccount)
                            ).scalar_one() == 100_000
        cases = dict(conn.execute(select(Case.outcome, text("count(*)"))
                                  .group_by(Case.outcome)).all())
    assert cases == {"reinstated": 1, "skipped": 99_999}
    again = invoke("run", KEY, "--faulty", "spam@7", "--accounts-file", str(listed),
                   "--dry-run", "--batch-size", "20000")  # the same list: the same incident
    assert again.exit_code == 0, describe(again)
