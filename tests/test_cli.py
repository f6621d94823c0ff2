"""`reinstate`, the command line: exit statuses, messages, and bad input that changes nothing.

The contract of every command: exit status 0 on success; 2 on bad input, with a message on
stderr naming what is wrong and not one row changed, platform or pipeline; 1 on failure.
Typer's own usage errors exit 2 as well. Every test that needs a database runs on SQLite
and on PostgreSQL through the fixtures in conftest.py.

Bad input for `reinstate run` must be refused before the Prefect flow starts: those tests
replace the flow with a tripwire, so they need no Prefect server and would fail loudly if
the flow were reached. Only the last tests (marked `prefect`) run the real flow.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, literal_column, select, table, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner, Result

from commands import reinstate as cli
from commands.reinstate import app
from reinstatement import runner
from reinstatement.incident_request import IncidentRequest
from reinstatement.models import Case, Notice
from reinstatement.platform_schema import PLATFORM_TABLES, accounts, enforcement_actions, pins
from reinstatement.platform_schema import rule_versions as rule_versions_table
from reinstatement.reports import OUTCOMES, incident_report
from reinstatement.seed import (
    EXPECTED_OUTCOME,
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    SeedOptions,
    SeedSummary,
    generate,
    seed,
)
from reinstatement.states import PIPELINE_ACTOR
from reinstatement.store.engine import make_engine
from reinstatement.store.schema import head_revision
from tests.factories import Platform, snapshot
from tests.factories import seeded_incident_request as incident_request

KEY = "INC-CLI-1"
INCIDENT_ARGS = [
    "--faulty", INCIDENT_FAULTY[0], "--faulty", INCIDENT_FAULTY[1],
    "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat(),
]
SECRET = "s3cret-pw"


# -- helpers ------------------------------------------------------------------------------

def invoke(*args: str) -> Result:
    """Run `reinstate ARGS` in-process; stdout and stderr come back apart."""
    return CliRunner().invoke(app, list(args))


def describe(result: Result) -> str:
    """Everything about a run, for assertion messages."""
    return (f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n"
            f"{result.stderr}\n--- exception\n{result.exception!r}")


def assert_refused(result: Result, *fragments: str) -> None:
    """Exit 2, each fragment in the message on stderr, nothing on stdout."""
    assert result.exit_code == 2, describe(result)
    for fragment in fragments:
        assert fragment in result.stderr, describe(result)
    assert result.stdout == "", describe(result)


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, describe(result)


def all_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, platform and pipeline (reinstatement_*), by table name.

    The rows are read untyped (SELECT *), so a column the platform filled with something
    its type would not decode (invalid JSON on SQLite, say) still compares.
    """
    with engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
        return {
            name: sorted(
                (tuple(row) for row in conn.execute(
                    select(literal_column("*")).select_from(table(name)))),
                key=repr,
            )
            for name in names
        }


def schema(engine: Engine) -> dict[str, Any]:
    """Every table with its columns, keys, indexes and constraints, comparable with ==."""
    with engine.connect() as conn:
        insp = inspect(conn)
        result: dict[str, Any] = {}
        for name in sorted(insp.get_table_names()):
            result[name] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                            for c in insp.get_columns(name)],
                "pk": insp.get_pk_constraint(name),
                "fks": sorted(map(repr, insp.get_foreign_keys(name))),
                "indexes": sorted(map(repr, insp.get_indexes(name))),
                "unique": sorted(map(repr, insp.get_unique_constraints(name))),
            }
        return result


def state(engine: Engine) -> tuple[Any, Any]:
    """The platform's rows (the factories' snapshot) and every row of every table."""
    return snapshot(engine), all_rows(engine)


def pipeline_tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {n for n in inspect(conn).get_table_names() if n.startswith("reinstatement_")}


def count(engine: Engine, tbl: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tbl)).scalar_one())


def run_steps(engine: Engine, request: IncidentRequest) -> None:
    """Register, plan, verify and restore as the flow does, without Prefect."""
    runner.run_without_prefect(engine, request, PIPELINE_ACTOR)


def case_outcomes(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        return {row.account_id: row.outcome for row in conn.execute(
            select(Case.account_id, Case.outcome))}


def json_lines(output: str) -> list[dict[str, Any]]:
    objects = [json.loads(line) for line in output.splitlines()]
    assert all(isinstance(o, dict) for o in objects)
    return objects


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def flow_tripwire(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the Prefect flow: reaching it is a test failure (and needs no server)."""
    started: list[Any] = []

    def tripwire(engine: Engine, request: Any) -> dict[str, Any]:
        started.append(request)
        raise AssertionError(f"the flow started for {request!r}")

    monkeypatch.setattr(cli, "run_flow", tripwire)
    return started


@pytest.fixture
def empty_env(empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Like cli_env, on a database without a single table."""
    monkeypatch.setenv("REINSTATE_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("REINSTATE_EMAIL_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("REINSTATE_EMAIL_BACKEND", "file")
    monkeypatch.chdir(tmp_path)
    return empty_db_url


@pytest.fixture
def empty_engine(empty_env: str) -> Iterator[Engine]:
    engine = make_engine(empty_env)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(engine: Engine, cli_env: dict[str, str]) -> SeedSummary:
    """The seeded incident, nothing run yet."""
    return seed(engine, SeedOptions(accounts=200))


@pytest.fixture
def completed(engine: Engine, seeded: SeedSummary) -> SeedSummary:
    """The seeded incident, run to the end by the steps (no Prefect)."""
    run_steps(engine, incident_request())
    return seeded


# -- 1. reinstate db create-platform / upgrade --------------------------------------------

def test_db_create_platform_creates_then_changes_nothing(empty_engine: Engine) -> None:
    first = invoke("db", "create-platform")
    assert_ok(first)
    assert first.stdout.strip() == f"created: {', '.join(PLATFORM_TABLES)}"
    tables, rows = schema(empty_engine), all_rows(empty_engine)
    assert set(tables) == set(PLATFORM_TABLES)

    again = invoke("db", "create-platform")
    assert_ok(again)
    assert again.stdout.strip() == "platform tables already exist"
    assert schema(empty_engine) == tables
    assert all_rows(empty_engine) == rows


def test_db_upgrade_migrates_then_changes_nothing(empty_engine: Engine) -> None:
    assert_ok(invoke("db", "create-platform"))
    platform_tables = schema(empty_engine)

    first = invoke("db", "upgrade")
    assert_ok(first)
    assert first.stdout.strip() == f"pipeline schema upgraded from nothing to {head_revision()}"
    tables, rows = schema(empty_engine), all_rows(empty_engine)
    assert pipeline_tables(empty_engine)
    # The platform's tables are never touched by the pipeline's migrations.
    assert {name: tables[name] for name in PLATFORM_TABLES} == platform_tables

    again = invoke("db", "upgrade")
    assert_ok(again)
    assert again.stdout.strip() == f"pipeline schema already at {head_revision()}"
    assert schema(empty_engine) == tables
    assert all_rows(empty_engine) == rows


# -- 2. reinstate seed --------------------------------------------------------------------

def test_seed_writes_the_incident_and_prints_counts(engine: Engine,
                                                    cli_env: dict[str, str]) -> None:
    result = invoke("seed", "--accounts", "300", "--seed", "5")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"seeded 300 accounts, {count(engine, enforcement_actions):,} enforcement actions "
        f"and {count(engine, pins):,} pins in ")
    assert count(engine, accounts) == 300
    expected = Counter(EXPECTED_OUTCOME[kind] for kind, _ in
                       generate(SeedOptions(accounts=300, seed=5)) if EXPECTED_OUTCOME[kind])
    assert lines[1] == "expected outcomes for the seeded incident: " + ", ".join(
        f"{outcome} {number:,}" for outcome, number in sorted(expected.items()))


def test_seed_into_a_seeded_database_is_refused(engine: Engine,
                                                cli_env: dict[str, str]) -> None:
    assert_ok(invoke("seed", "--accounts", "300", "--seed", "5"))
    before = state(engine)
    assert_refused(invoke("seed", "--accounts", "300", "--seed", "5"),
                   "already holds rows", "empty platform database")
    assert state(engine) == before


@pytest.mark.parametrize(("args", "option"), [
    pytest.param(["--accounts", "0"], "--accounts", id="zero-accounts"),
    pytest.param(["--accounts", "-5"], "--accounts", id="negative-accounts"),
    pytest.param(["--accounts", "many"], "--accounts", id="accounts-not-a-number"),
    pytest.param(["--pins-per-account", "1000"], "--pins-per-account", id="absurd-pins"),
    pytest.param(["--pins-per-account", "-1"], "--pins-per-account", id="negative-pins"),
    pytest.param(["--bogus"], "--bogus", id="unknown-option"),
])
def test_seed_with_bad_options_is_refused(engine: Engine, cli_env: dict[str, str],
                                          args: list[str], option: str) -> None:
    before = state(engine)
    result = invoke("seed", *args)
    assert result.exit_code == 2, describe(result)
    assert option in result.stderr, describe(result)
    assert state(engine) == before
    assert count(engine, accounts) == 0


def test_seed_without_the_platform_tables_says_to_create_them(empty_engine: Engine) -> None:
    assert_refused(invoke("seed", "--accounts", "10"), "reinstate db create-platform")
    assert all_rows(empty_engine) == {}


# -- 3. bad input for reinstate run -------------------------------------------------------

WINDOW = ["--since", "2025-04-01T00:00:00Z", "--until", "2025-04-15T00:00:00Z"]
SPAM = ["--faulty", "spam_burst@7"]

# (arguments after `run`, files to write first, fragments the message must hold)
BAD_RUNS = [
    pytest.param([KEY, "--faulty", "nosuch@1"], {}, ["unknown rule version nosuch@1"],
                 id="unknown-version"),
    pytest.param([KEY, "--faulty", "spam_burst@7=spam_burst@99"], {},
                 ["unknown rule version spam_burst@99", "corrected version of spam_burst@7"],
                 id="unknown-corrected-version"),
    pytest.param([KEY, "--faulty", "spam_burst@7=image_hash@3"], {},
                 ["image_hash@3 cannot correct spam_burst@7", "another rule"],
                 id="corrected-by-another-rule"),
    pytest.param([KEY, "--faulty", "spam_burst@7=spam_burst@8", "--faulty", "spam_burst@8"],
                 {}, ["spam_burst@8 is named faulty"], id="corrected-named-faulty"),
    pytest.param([KEY, "--faulty", "image_hash@2=image_hash@2"], {},
                 ["image_hash@2 cannot correct image_hash@2", "'faulty'"],
                 id="corrected-has-status-faulty"),
    pytest.param([KEY, *SPAM, "--faulty", "spam_burst@7=spam_burst@8"], {},
                 ["named more than once: spam_burst@7"], id="faulty-named-twice"),
    pytest.param([KEY, "--faulty", "spam_burst"], {},
                 ["faulty_versions", "'spam_burst' is not rule@version"],
                 id="faulty-without-version"),
    pytest.param([KEY, "--faulty", "spam_burst@7; DROP TABLE accounts"], {},
                 ["faulty_versions", "is not rule@version"], id="faulty-sql-injection"),
    pytest.param([KEY, *SPAM, "--since", "2025-04-15T00:00:00Z",
                  "--until", "2025-04-01T00:00:00Z"], {},
                 ["the window ends (2025-04-01T00:00:00+00:00) before it starts"],
                 id="reversed-window"),
    pytest.param([KEY, *SPAM, "--since", "2025-04-01T00:00:00"], {},
                 ["--since", "has no time zone"], id="naive-since"),
    pytest.param([KEY, *SPAM, "--until", "2025-04-15T00:00:00"], {},
                 ["--until", "has no time zone"], id="naive-until"),
    pytest.param([KEY, *SPAM, "--since", "yesterday"], {},
                 ["--since: 'yesterday' is not an ISO 8601 timestamp"], id="since-not-a-time"),
    pytest.param([KEY, *SPAM, "--until", "9999-12-31T23:00:00-05:00"], {},
                 ["until", "out of range"], id="until-out-of-range"),
    pytest.param([KEY, *SPAM, "--since", "0001-01-01T00:00:00+05:00"], {},
                 ["since", "out of range"], id="since-out-of-range"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"],
                 {"ids.txt": "12\n# comment\n\nabc\n"},
                 ["ids.txt, line 4: not an account id: 'abc'"], id="accounts-file-garbage"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"],
                 {"ids.txt": "12\x0c13\n\u2028\nabc\n"},
                 ["ids.txt, line 1: not an account id"], id="accounts-file-odd-line-breaks"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"], {"ids.txt": ""},
                 ["ids.txt: no account ids in the file"], id="accounts-file-empty"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"], {"ids.txt": "# only\n\n"},
                 ["ids.txt: no account ids in the file"], id="accounts-file-only-comments"),
    pytest.param([KEY, *SPAM, "--accounts-file", "missing.txt"], {},
                 ["cannot read the accounts file 'missing.txt'"], id="accounts-file-missing"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"],
                 {"ids.txt": "1; DELETE FROM accounts\n"},
                 ["ids.txt, line 1: not an account id: '1; DELETE FROM accounts'"],
                 id="accounts-file-sql-injection"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"], {"ids.txt": "5\n0\n"},
                 ["ids.txt, line 2: not an account id: '0'"], id="accounts-file-zero"),
    pytest.param([KEY, *SPAM, "--accounts-file", "ids.txt"],
                 {"ids.txt": "9223372036854775808\n"},
                 ["line 1: not an account id"], id="accounts-file-beyond-bigint"),
    pytest.param([KEY, *SPAM, "--batch-size", "-1"], {},
                 ["batch_size", "greater than or equal to 1"], id="batch-size-negative"),
    pytest.param([KEY, *SPAM, "--batch-size", "0"], {},
                 ["batch_size", "greater than or equal to 1"], id="batch-size-zero"),
    pytest.param([KEY, *SPAM, "--batch-size", "10000000"], {},
                 ["batch_size", "less than or equal to 50000"], id="batch-size-absurd"),
    pytest.param(["INC 1'; DROP TABLE accounts;--", *SPAM], {},
                 ["incident_key", "is not an incident key", "no spaces"],
                 id="key-forbidden-characters"),
    pytest.param(["x" * 201, *SPAM], {}, ["incident_key"], id="key-too-long"),
    # Typer's own usage errors exit 2 as well.
    pytest.param([KEY], {}, ["no incident registered", "declare it with --faulty"],
                 id="unregistered-without-faulty"),
    pytest.param([KEY, "--since", "2025-04-01T00:00:00Z"], {},
                 ["--since is part of an incident's declaration"],
                 id="part-of-a-declaration-without-faulty"),
    pytest.param([*SPAM], {}, ["Missing argument"], id="usage-no-key"),
    pytest.param([KEY, *SPAM, "--batch-size", "many"], {}, ["--batch-size"],
                 id="usage-batch-size-not-a-number"),
    pytest.param([KEY, *SPAM, "--approve-everything"], {}, ["--approve-everything"],
                 id="usage-unknown-option"),
]


@pytest.mark.parametrize(("args", "files", "fragments"), BAD_RUNS)
def test_run_with_bad_input_is_refused_before_the_flow(
    engine: Engine, seeded: SeedSummary, flow_tripwire: list[Any], tmp_path: Path,
    args: list[str], files: dict[str, str], fragments: list[str],
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    before = state(engine)
    assert_refused(invoke("run", *args), *fragments)
    assert state(engine) == before
    assert flow_tripwire == []


def test_accounts_file_with_a_byte_order_mark_is_read(
    engine: Engine, seeded: SeedSummary, flow_tripwire: list[Any], tmp_path: Path,
) -> None:
    """A BOM (as some editors write) is not garbage; the run gets to the flow."""
    from reinstatement import account_lists

    (tmp_path / "ids.txt").write_text("\ufeff12\r\n13\r\n", encoding="utf-8")
    result = invoke("run", KEY, *SPAM, "--accounts-file", "ids.txt")
    # The ids reach the run through the database, never as its parameters.
    assert flow_tripwire and flow_tripwire[0].account_ids is None, describe(result)
    assert flow_tripwire[0].account_list == str(account_lists.reference_of([12, 13]))


@pytest.mark.parametrize("command", [
    pytest.param(["run", KEY, *SPAM], id="run"),
    pytest.param(["report", KEY], id="report"),
    pytest.param(["cases", KEY], id="cases"),
])
def test_without_the_pipeline_schema_commands_say_to_upgrade(
    empty_engine: Engine, flow_tripwire: list[Any], command: list[str],
) -> None:
    assert_ok(invoke("db", "create-platform"))
    before = all_rows(empty_engine), schema(empty_engine)
    assert_refused(invoke(*command), "run `reinstate db upgrade` first")
    assert (all_rows(empty_engine), schema(empty_engine)) == before
    assert pipeline_tables(empty_engine) == set()
    assert flow_tripwire == []


@pytest.mark.parametrize("command", [
    pytest.param(["run", KEY, *SPAM], id="run"),
    pytest.param(["report", KEY], id="report"),
    pytest.param(["cases", KEY], id="cases"),
])
def test_without_the_platform_tables_commands_say_so(
    empty_engine: Engine, flow_tripwire: list[Any], command: list[str],
) -> None:
    assert_ok(invoke("db", "upgrade"))
    before = all_rows(empty_engine), schema(empty_engine)
    assert_refused(invoke(*command), "platform tables", "reinstate db create-platform")
    assert (all_rows(empty_engine), schema(empty_engine)) == before
    assert flow_tripwire == []


# A corrected version whose condition does not parse: (condition, the place named).
BAD_CONDITIONS = [
    pytest.param({"signal": "x", "op": "=~", "value": 1}, "condition.op: unknown operator",
                 id="unknown-operator"),
    pytest.param({"signal": "Links-Per-Hour", "op": "==", "value": 1}, "condition.signal",
                 id="bad-signal-name"),
    pytest.param({"all": [{"signal": "x", "op": "==", "value": 1},
                          {"not": {"signal": "y", "op": "~", "value": 2}}]},
                 "condition.all[1].not.op", id="nested-unknown-operator"),
    pytest.param({"signal": "x", "op": "in", "value": []}, "condition.value",
                 id="empty-in-list"),
    pytest.param({"signal": "x", "op": "<", "value": [1, 2]}, "condition.value",
                 id="list-for-comparison"),
    pytest.param({"signal": "x", "op": "==", "value": 1, "why": "extra"}, "condition: unexpected",
                 id="extra-key"),
    pytest.param({"signal": "x"}, "condition: missing", id="missing-keys"),
    pytest.param([1, 2], "condition: expected an object", id="array"),
    pytest.param(None, "condition", id="json-null"),
]


def add_probe_rule(engine: Engine, corrected_condition: Any) -> None:
    """probe@1 (faulty, with one ban) and probe@2, active, with the condition given."""
    with engine.begin() as conn:
        p = Platform(conn)
        faulty = p.rule("probe", 1, "faulty", {"signal": "x", "op": ">", "value": 0})
        if corrected_condition is None:
            # JSON null, not SQL NULL (the column is NOT NULL and none_as_null).
            p.rule("probe", 2, "active", {"placeholder": True})
            conn.execute(update(rule_versions_table)
                         .where(rule_versions_table.c.rule_name == "probe",
                                rule_versions_table.c.version == 2)
                         .values(condition=text("'null'")))
        else:
            p.rule("probe", 2, "active", corrected_condition)
        p.ban(p.account(), faulty, {"x": 3})


@pytest.mark.parametrize("spec", ["probe@1", "probe@1=probe@2"], ids=["default", "explicit"])
@pytest.mark.parametrize(("condition", "place"), BAD_CONDITIONS)
def test_run_refuses_a_corrected_version_whose_condition_does_not_parse(
    engine: Engine, seeded: SeedSummary, flow_tripwire: list[Any],
    condition: Any, place: str, spec: str,
) -> None:
    add_probe_rule(engine, condition)
    before = state(engine)
    assert_refused(invoke("run", KEY, "--faulty", spec), f"probe@2: {place}")
    assert state(engine) == before
    assert flow_tripwire == []


def test_run_refuses_a_corrected_version_whose_condition_is_not_json(
    engine: Engine, backend: str, seeded: SeedSummary, flow_tripwire: list[Any],
) -> None:
    add_probe_rule(engine, {"signal": "x", "op": "==", "value": 1})
    statement = text("UPDATE rule_versions SET condition = :c "
                     "WHERE rule_name = 'probe' AND version = 2")
    if backend == "postgresql":
        # The JSON column itself refuses it: the case cannot arise there (the JSON that is
        # not a condition is tested above).
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(statement, {"c": "{not json"})
        return
    with engine.begin() as conn:
        conn.execute(statement, {"c": "{not json"})
    before = all_rows(engine)  # snapshot() would choke on the column too
    assert_refused(invoke("run", KEY, "--faulty", "probe@1"),
                   "probe@2: condition: not valid JSON")
    assert all_rows(engine) == before
    assert flow_tripwire == []


# -- 4. the same key with other parameters ------------------------------------------------

OTHER_PARAMETERS = [
    pytest.param(["--faulty", INCIDENT_FAULTY[0], "--faulty", INCIDENT_FAULTY[1],
                  "--since", "2025-03-01T00:00:00Z", "--until", INCIDENT_UNTIL.isoformat()],
                 {}, ['since: registered "2025-04-01T00:00:00+00:00", '
                      'this run "2025-03-01T00:00:00+00:00"'], id="other-since"),
    pytest.param(["--faulty", INCIDENT_FAULTY[0], "--faulty", INCIDENT_FAULTY[1],
                  "--since", INCIDENT_SINCE.isoformat(), "--until", "2025-05-01T00:00:00Z"],
                 {}, ["until: registered"], id="other-until"),
    pytest.param(["--faulty", INCIDENT_FAULTY[0], "--faulty", INCIDENT_FAULTY[1]], {},
                 ["since: registered", "this run null", "until: registered"], id="no-window"),
    pytest.param(["--faulty", INCIDENT_FAULTY[0], "--since", INCIDENT_SINCE.isoformat(),
                  "--until", INCIDENT_UNTIL.isoformat()],
                 {}, ["faulty_versions: registered"], id="fewer-faulty-versions"),
    pytest.param(["--faulty", INCIDENT_FAULTY[0], "--faulty", "image_hash@2=image_hash@3",
                  "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat()],
                 {}, ["faulty_versions: registered"], id="corrected-version-spelt-out"),
    pytest.param([*INCIDENT_ARGS, "--accounts-file", "ids.txt"], {"ids.txt": "1\n2\n"},
                 ["account_ids: registered null"], id="account-list"),
    pytest.param([*INCIDENT_ARGS, "--no-notify"], {},
                 ["notify: registered true, this run false"], id="no-notify"),
]


@pytest.mark.parametrize(("args", "files", "fragments"), OTHER_PARAMETERS)
def test_same_key_with_other_parameters_is_refused(
    engine: Engine, completed: SeedSummary, flow_tripwire: list[Any], tmp_path: Path,
    args: list[str], files: dict[str, str], fragments: list[str],
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    before = state(engine)
    assert_refused(invoke("run", INCIDENT_KEY, *args),
                   f"incident {INCIDENT_KEY} is already registered with other parameters",
                   "use a new key", *fragments)
    assert state(engine) == before
    assert flow_tripwire == []


def test_same_key_with_the_same_parameters_goes_on_to_the_flow(
    engine: Engine, completed: SeedSummary, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same instants in other zones, and other operational switches, are the same."""
    seen: list[IncidentRequest] = []

    def fake_flow(flow_engine: Engine, request: IncidentRequest) -> dict[str, Any]:
        seen.append(request)
        with flow_engine.connect() as conn:
            return incident_report(conn, request.incident_key)

    monkeypatch.setattr(cli, "run_flow", fake_flow)
    result = invoke("run", INCIDENT_KEY, "--faulty", INCIDENT_FAULTY[1],
                    "--faulty", INCIDENT_FAULTY[0], "--since", "2025-04-01T02:00:00+02:00",
                    "--until", "2025-04-14T19:00:00-05:00", "--batch-size", "7")
    assert_ok(result)
    assert len(seen) == 1 and seen[0].batch_size == 7
    assert result.stdout.startswith(f"incident {INCIDENT_KEY}: ")


# -- 5. unknown keys, unknown outcomes ----------------------------------------------------

@pytest.mark.parametrize("command", [
    pytest.param(["report", "NOSUCH"], id="report"),
    pytest.param(["report", "NOSUCH", "--json"], id="report-json"),
    pytest.param(["cases", "NOSUCH"], id="cases"),
    pytest.param(["cases", "NOSUCH", "--json", "--outcome", "reinstated"], id="cases-json"),
])
def test_unknown_incident_key_is_refused(engine: Engine, completed: SeedSummary,
                                         command: list[str]) -> None:
    before = state(engine)
    assert_refused(invoke(*command), "no incident registered under the key 'NOSUCH'")
    assert state(engine) == before


@pytest.mark.parametrize("outcome", ["bogus", "REINSTATED", "", "reinstated; --"])
def test_cases_with_an_unknown_outcome_is_refused(engine: Engine, completed: SeedSummary,
                                                  outcome: str) -> None:
    before = state(engine)
    assert_refused(invoke("cases", INCIDENT_KEY, "--outcome", outcome),
                   f"--outcome: {outcome!r} is not one of", *OUTCOMES)
    assert state(engine) == before


# -- 6. report and cases of a completed incident ------------------------------------------

def test_cases_json_lists_every_case_with_its_reasons(engine: Engine,
                                                      completed: SeedSummary) -> None:
    result = invoke("cases", INCIDENT_KEY, "--json")
    assert_ok(result)
    listed = json_lines(result.stdout)
    expected = case_outcomes(engine)
    assert len(listed) == len(expected) > 0
    assert {c["account_id"]: c["outcome"] for c in listed} == expected
    for case in listed:
        assert case["outcome"] in OUTCOMES, case
        assert isinstance(case["reasons"], dict) and case["reasons"].get("summary"), case
        assert case["preview"] is False, case


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_cases_json_for_one_outcome_lists_exactly_those(engine: Engine, completed: SeedSummary,
                                                        outcome: str) -> None:
    result = invoke("cases", INCIDENT_KEY, "--outcome", outcome, "--json")
    assert_ok(result)
    listed = json_lines(result.stdout)
    assert {c["outcome"] for c in listed} <= {outcome}
    wanted = {a for a, o in case_outcomes(engine).items() if o == outcome}
    assert sorted(c["account_id"] for c in listed) == sorted(wanted)
    assert len(listed) == completed.expected_outcomes[outcome]


def test_report_json_counts_every_outcome(engine: Engine, completed: SeedSummary) -> None:
    result = invoke("report", INCIDENT_KEY, "--json")
    assert_ok(result)
    assert len(result.stdout.strip().splitlines()) == 1
    report = json.loads(result.stdout)
    counted = Counter(case_outcomes(engine).values())
    assert report["outcomes"] == {o: counted.get(o, 0) for o in OUTCOMES}
    assert {o: n for o, n in report["outcomes"].items() if n} == dict(
        completed.expected_outcomes)
    assert report["cases"] == sum(counted.values())
    assert report["incident"] == INCIDENT_KEY
    assert report["preview_outcomes"] == {}
    assert report["window"] == {"since": INCIDENT_SINCE.isoformat(),
                                "until": INCIDENT_UNTIL.isoformat()}


def test_report_and_cases_as_text(engine: Engine, completed: SeedSummary) -> None:
    report = invoke("report", INCIDENT_KEY)
    assert_ok(report)
    assert report.stdout.startswith(f"incident {INCIDENT_KEY}: ")
    for outcome, number in completed.expected_outcomes.items():
        assert any(line.split() == [outcome, f"{number:,}"]
                   for line in report.stdout.splitlines()), describe(report)

    cases = invoke("cases", INCIDENT_KEY)
    assert_ok(cases)
    lines = cases.stdout.splitlines()
    assert len(lines) == len(case_outcomes(engine))
    reinstated = invoke("cases", INCIDENT_KEY, "--outcome", "reinstated")
    assert_ok(reinstated)
    assert len(reinstated.stdout.splitlines()) == completed.expected_outcomes["reinstated"]
    assert all(" reinstated " in line for line in reinstated.stdout.splitlines())


# -- 7. an unreachable database -----------------------------------------------------------

ALL_COMMANDS = [
    pytest.param(["report", "X"], id="report"),
    pytest.param(["cases", "X", "--json"], id="cases"),
    pytest.param(["run", "X", "--faulty", "spam_burst@7"], id="run"),
    pytest.param(["seed", "--accounts", "10"], id="seed"),
    pytest.param(["db", "create-platform"], id="db-create-platform"),
    pytest.param(["db", "upgrade"], id="db-upgrade"),
]


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REINSTATE_EMAIL_DIR", str(tmp_path / "outbox"))

    def use(url: str) -> None:
        monkeypatch.setenv("REINSTATE_DATABASE_URL", url)

    return use


def test_unreachable_database_is_reported(no_database: Callable[[str], None],
                                          flow_tripwire: list[Any]) -> None:
    no_database("postgresql://postgres@127.0.0.1:1/nope")
    assert_refused(invoke("report", "X"), "cannot reach the database",
                   "postgresql+psycopg://postgres@127.0.0.1:1/nope")


@pytest.mark.parametrize("url", [
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/nope", id="password-in-userinfo"),
    pytest.param(f"postgres://app:{SECRET}@127.0.0.1:1/nope", id="postgres-scheme"),
    pytest.param(f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/nope", id="explicit-driver"),
    pytest.param(f"postgresql://app@127.0.0.1:1/nope?password={SECRET}", id="password-in-query"),
])
@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_the_database_password_is_never_shown(no_database: Callable[[str], None],
                                              flow_tripwire: list[Any], url: str,
                                              command: list[str]) -> None:
    no_database(url)
    result = invoke(*command)
    assert_refused(result, "cannot reach the database")
    assert SECRET not in result.stdout + result.stderr + repr(result.exception)
    assert "***" in result.stderr


@pytest.mark.parametrize("url", [
    pytest.param(f"mysql://app:{SECRET}@db.example/platform", id="unsupported-database"),
    pytest.param(f"postgresql+asyncpg://app:{SECRET}@db.example/platform", id="other-driver"),
    pytest.param(f"no url at all {SECRET}", id="not-a-url"),
])
def test_a_bad_database_url_is_refused_without_echoing_it(
    no_database: Callable[[str], None], url: str,
) -> None:
    no_database(url)
    result = invoke("report", "X")
    assert_refused(result, "REINSTATE_DATABASE_URL")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if c.id != "db-create-platform"
                                     and c.id != "db-upgrade"])
def test_a_missing_sqlite_file_is_not_created(no_database: Callable[[str], None],
                                              flow_tripwire: list[Any], tmp_path: Path,
                                              command: list[str]) -> None:
    missing = tmp_path / "typo.db"
    no_database(f"sqlite:///{missing}")
    assert_refused(invoke(*command), "cannot reach the database", "no such file")
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_in_a_missing_folder_is_unreachable(
    no_database: Callable[[str], None], tmp_path: Path,
) -> None:
    no_database(f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")
    assert_refused(invoke("db", "create-platform"), "cannot reach the database")


# -- 8. bad settings ----------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value"), [
    pytest.param("REINSTATE_SMTP_PORT", "abc", id="smtp-port-not-a-number"),
    pytest.param("REINSTATE_SMTP_PORT", "70000", id="smtp-port-out-of-range"),
    pytest.param("REINSTATE_BATCH_SIZE", "0", id="batch-size-zero"),
    pytest.param("REINSTATE_EMAIL_BACKEND", "pigeon", id="unknown-email-backend"),
    pytest.param("REINSTATE_SMTP_TIMEOUT_SECONDS", "-1", id="negative-timeout"),
    pytest.param("REINSTATE_EMAIL_FROM", "a@example.com\r\nBcc: x@example.com",
                 id="multi-line-sender"),
])
@pytest.mark.parametrize("command", [
    pytest.param(["report", INCIDENT_KEY], id="report"),
    pytest.param(["run", INCIDENT_KEY, *INCIDENT_ARGS], id="run"),
])
def test_bad_settings_are_refused_naming_the_variable(
    engine: Engine, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    flow_tripwire: list[Any], variable: str, value: str, command: list[str],
) -> None:
    seed(engine, SeedOptions(accounts=50))
    before = state(engine)
    monkeypatch.setenv(variable, value)
    result = invoke(*command)
    assert_refused(result, "bad settings", variable)
    assert state(engine) == before
    assert flow_tripwire == []


# -- 9. the real flow, through Prefect ----------------------------------------------------

@pytest.mark.prefect
def test_dry_run_previews_then_the_real_run_recomputes(
    prefect_api: None, engine: Engine, cli_env: dict[str, str],
) -> None:
    summary = seed(engine, SeedOptions(accounts=200))
    expected = dict(summary.expected_outcomes)
    before = snapshot(engine)

    # --no-notify on both: notify is one of the incident's parameters (the same key with
    # notify switched is refused, see test_same_key_with_other_parameters_is_refused).
    dry = invoke("run", INCIDENT_KEY, *INCIDENT_ARGS, "--dry-run", "--no-notify",
                 "--batch-size", "64")
    assert_ok(dry)
    assert "preview (dry run, nothing changed)" in dry.stdout
    assert snapshot(engine) == before
    previewed = json_lines(invoke("cases", INCIDENT_KEY, "--json").stdout)
    assert previewed and all(c["preview"] is True for c in previewed)
    assert Counter(c["outcome"] for c in previewed) == expected
    dry_report = json.loads(invoke("report", INCIDENT_KEY, "--json").stdout)
    assert dry_report["preview_outcomes"] == expected
    assert not any(dry_report["outcomes"].values())

    real = invoke("run", INCIDENT_KEY, *INCIDENT_ARGS, "--no-notify", "--batch-size", "64")
    assert_ok(real)
    report_result = invoke("report", INCIDENT_KEY, "--json")
    assert_ok(report_result)
    report = json.loads(report_result.stdout)
    assert {o: n for o, n in report["outcomes"].items() if n} == expected
    assert report["preview_outcomes"] == {}
    assert report["status"] == "completed"
    assert [r["dry_run"] for r in report["runs"]] == [True, False]
    cases = json_lines(invoke("cases", INCIDENT_KEY, "--json").stdout)
    assert not any(c["preview"] for c in cases)
    assert Counter(c["outcome"] for c in cases) == expected
    # Restored on the platform, and no notice went out.
    reinstated = {c["account_id"] for c in cases if c["outcome"] == "reinstated"}
    after = snapshot(engine)
    assert {a for a, row in after["accounts"].items()
            if row["status"] != before["accounts"][a]["status"]} == reinstated
    with engine.connect() as conn:
        states = set(conn.execute(select(Notice.state)).scalars())
    assert states <= {"suppressed"}
    assert not (Path(cli_env["REINSTATE_EMAIL_DIR"]).exists()
                and any(Path(cli_env["REINSTATE_EMAIL_DIR"]).iterdir()))


@pytest.mark.prefect
def test_the_command_seed_prints_reinstates_the_seeded_incident(
    prefect_api: None, engine: Engine, cli_env: dict[str, str]
) -> None:
    """`reinstate seed` names the faulty versions, their corrections and the window, and
    the command it prints is the one that reinstates the incident it wrote."""
    import shlex

    seeded_output = invoke("seed", "--accounts", "300", "--seed", "5")
    assert_ok(seeded_output)
    text = seeded_output.stdout
    assert "faulty spam_burst@7, corrected by spam_burst@8" in text
    assert "faulty image_hash@2, corrected by image_hash@3" in text
    assert f"window: bans created from {INCIDENT_SINCE.isoformat()}" in text
    (line,) = [line for line in text.splitlines() if "reinstate it: reinstate run" in line]
    command = shlex.split(line.split("reinstate it: reinstate ", 1)[1].split(" [", 1)[0])
    result = invoke(*command, "--dry-run")
    assert_ok(result)
    expected = generate_expected(300, 5)
    report = json.loads(invoke("report", INCIDENT_KEY, "--json").stdout)
    assert {k: v for k, v in report["preview_outcomes"].items() if v} == expected


def generate_expected(accounts: int, seed_number: int, shape: str = "standard"
                      ) -> dict[str, int]:
    from reinstatement.seed import expected_outcome

    return dict(Counter(expected_outcome(kind, shape) for kind, _ in
                        generate(SeedOptions(accounts=accounts, seed=seed_number, shape=shape))
                        if expected_outcome(kind, shape)))


@pytest.mark.prefect
def test_the_mixed_shape_judges_as_the_seed_expects(
    prefect_api: None, engine: Engine, cli_env: dict[str, str]
) -> None:
    """The benchmark's second shape: a faulty version with no correction named beside the
    two (its cases go to review), evidence padded with twenty signals, reversed older bans;
    its printed command previews exactly the outcomes the seed meant."""
    import shlex

    seeded_output = invoke("seed", "--accounts", "400", "--seed", "7", "--shape", "mixed")
    assert_ok(seeded_output)
    text = seeded_output.stdout
    assert "faulty link_farm@1, with no corrected version: its cases go to review" in text
    with engine.connect() as conn:
        reversed_bans = conn.execute(select(func.count()).select_from(enforcement_actions)
                                     .where(enforcement_actions.c.reversed_at.is_not(None))
                                     ).scalar_one()
    assert reversed_bans > 300
    (line,) = [line for line in text.splitlines() if "reinstate it: reinstate run" in line]
    command = shlex.split(line.split("reinstate it: reinstate ", 1)[1].split(" [", 1)[0])
    assert_ok(invoke(*command, "--dry-run"))
    expected = generate_expected(400, 7, "mixed")
    assert expected["needs_review"] > 20
    report = json.loads(invoke("report", INCIDENT_KEY, "--json").stdout)
    assert {k: v for k, v in report["preview_outcomes"].items() if v} == expected


def test_seed_refuses_an_unknown_shape(engine: Engine, cli_env: dict[str, str]) -> None:
    assert_refused(invoke("seed", "--accounts", "10", "--shape", "odd"), "--shape", "'odd'")
