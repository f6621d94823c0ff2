"""Fault detection (`reinstate detect`, the nightly's step 6), on SQLite and PostgreSQL.

Planted faults among healthy version changes, daily and weekly rhythms and a quiet rule
(reinstatement/seed_history.py): every fault found with its window within an hour of the
truth at both ends, no healthy version reported; both databases count what the reference
counts; a suspect restores nothing and its declaration previews as a dry run.
"""

from __future__ import annotations

import json
import shlex
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from reinstatement import detection
from reinstatement.detection_suspects import DetectionSettings, Suspect
from reinstatement.models import Suspect as SuspectRow
from reinstatement.platform_schema import enforcement_actions, rule_versions
from reinstatement.seed_history import (
    HISTORY_END,
    HistoryOptions,
    PlantedFault,
    history_in_memory,
    seed_history,
)
from tests.factories import snapshot
from tests.test_cli import assert_refused, describe, invoke

# Half the scenario's rates over three weeks: the smallest history on which the
# benchmark's sweep (bench/detect_bench.py) found every window within the hour.
DAYS, SCALE = 21, 0.5
ALL_SEEDS = range(1, 21)
FAST_SEEDS = (1, 2)


def seeded(engine: Engine, seed: int, faults: tuple[str, ...] | None = None,
           scale: float = SCALE) -> tuple[HistoryOptions, list[PlantedFault]]:
    options = HistoryOptions(days=DAYS, seed=seed, scale=scale,
                             **({} if faults is None else {"faults": faults}))
    return options, seed_history(engine, options).faults


def assert_found_exactly(suspects: list[Suspect], planted: list[PlantedFault]) -> None:
    assert sorted(s.version for s in suspects) == sorted(f.name for f in planted), [
        (s.version, round(s.score), s.reasons) for s in suspects]
    truth = {f.name: f for f in planted}
    for suspect in suspects:
        fault = truth[suspect.version]
        assert fault.since is not None and fault.until is not None
        assert abs(suspect.since - fault.since) <= timedelta(hours=1), (suspect, fault)
        assert abs(suspect.until - fault.until) <= timedelta(hours=1), (suspect, fault)


def check_seed(engine: Engine, seed: int) -> None:
    """8 times the predecessor's rate for 4 days (spam_links@3) and 3 times for 2 days in
    a weekly-seasonal rule (fake_engagement@4), among healthy version changes of 0.85 to
    1.2 times the rate, weekly rhythms and a quiet rule: both found, nothing else."""
    options, planted = seeded(engine, seed)
    assert {f.name for f in planted} == {"spam_links@3", "fake_engagement@4"}
    assert_found_exactly(detection.detect(engine, options.start, HISTORY_END), planted)


# Seeds 1 to 10 here, 11 to 20 in tests/test_detection_more_seeds.py: two files, so that
# pytest's workers (a file each) run the halves at once.
@pytest.mark.parametrize("seed", [
    pytest.param(seed, marks=() if seed in FAST_SEEDS else pytest.mark.slow)
    for seed in ALL_SEEDS[:10]])
def test_every_planted_fault_is_found_and_no_healthy_version(engine: Engine, seed: int
                                                             ) -> None:
    check_seed(engine, seed)


def test_a_history_without_faults_has_no_suspect(engine: Engine) -> None:
    options, planted = seeded(engine, 3, faults=())
    assert planted == []
    assert detection.detect(engine, options.start, HISTORY_END) == []


def test_the_database_counts_what_the_reference_counts(engine: Engine) -> None:
    """One set-based statement per database gives exactly the hourly counts (bans, bans
    reversed by a moderator, first enforcements) the generator's own rows give."""
    options, _ = seeded(engine, 4)
    lo = options.start - timedelta(days=DetectionSettings().history_days)
    with engine.connect() as conn:
        counted = detection.load_counts(conn, lo, HISTORY_END)
    _, reference, _ = history_in_memory(options)
    assert counted == reference
    assert sum(cell[1] for hours in counted.values() for cell in hours.values()) > 100
    assert sum(cell[2] for hours in counted.values() for cell in hours.values()) > 1000


def test_healthy_changes_reach_1_2_times_the_rate() -> None:
    """The seeds above are held to report no healthy version: among their healthy version
    changes are some of 1.15 to 1.2 times the predecessor's rate."""
    import random

    from reinstatement.seed_history import plan_versions

    ratios = []
    for seed in ALL_SEEDS:
        options = HistoryOptions(days=DAYS, seed=seed, scale=SCALE)
        plans, _ = plan_versions(options, random.Random(seed), options.planted())
        healthy = [p for p in plans if not p.faulty]
        ratios += [b.factor / a.factor for a, b in zip(healthy, healthy[1:], strict=False)
                   if a.rule == b.rule and b.deployed_at >= options.start]
    assert max(ratios) <= 1.2 + 1e-9
    assert sum(1.15 <= r for r in ratios) >= 10


def test_a_version_at_a_normal_rate_whose_bans_are_reversed_is_a_suspect(engine: Engine
                                                                        ) -> None:
    """1.2 times the predecessor's rate, but moderators reverse 12% of its bans against
    2%: the rate alone is healthy; the reversals make it a suspect."""
    options, planted = seeded(engine, 5, faults=("scraper_bot@3:1.2:96",))
    (suspect,) = detection.detect(engine, options.start, HISTORY_END)
    assert suspect.version == "scraper_bot@3"
    assert suspect.reasons[0].startswith("moderators reversed")
    assert not any(r.startswith("banned") for r in suspect.reasons)


# -- the command line -----------------------------------------------------------------------

def detect_json(options: HistoryOptions) -> list[dict[str, Any]]:
    result = invoke("detect", "--since", options.start.isoformat(), "--until",
                    HISTORY_END.isoformat(), "--json")
    assert result.exit_code == 0, describe(result)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_detect_prints_each_suspect_and_the_command_to_preview_it(
        engine: Engine, cli_env: dict[str, str]) -> None:
    seeded_output = invoke("seed", "--scenario", "detection", "--days", str(DAYS),
                           "--seed", "6")
    assert seeded_output.exit_code == 0, describe(seeded_output)
    assert "planted fault: spam_links@3 bans 8 times" in seeded_output.stdout
    (line,) = [line for line in seeded_output.stdout.splitlines() if "look for them" in line]
    table = invoke(*shlex.split(line.split("look for them: reinstate ", 1)[1]))
    assert table.exit_code == 0, describe(table)
    assert table.stdout.startswith("2 suspect rule version(s) from ")
    assert "preview: reinstate run SUSPECT-spam_links-3-" in table.stdout
    options = HistoryOptions(days=DAYS, seed=6)
    found = detect_json(options)
    assert [s["version"] for s in found] == ["spam_links@3", "fake_engagement@4"]
    for suspect in found:
        for name in ("version", "since", "until", "bans", "rate", "baseline_rate", "score",
                     "declaration"):
            assert suspect[name] not in (None, ""), name
        assert suspect["since"].endswith("Z") and suspect["until"].endswith("Z")
        assert suspect["rate"] > 2.5 * suspect["baseline_rate"]
        assert suspect["declaration"].startswith(f"--faulty {suspect['version']}=")


@pytest.mark.parametrize("args, fragments", [
    (["detect", "--since", "2025-05-01T00:00:00Z", "--until", "2025-04-01T00:00:00Z"],
     ("--since", "must be before --until")),
    (["detect", "--since", "last week"], ("--since", "'last week'", "ISO 8601")),
    (["detect", "--until", "2025-05-01T00:00:00"], ("--until", "no time zone")),
    (["seed", "--plant-fault", "spam_links@3:8"], ("--plant-fault", "RULE@V:FACTOR:HOURS")),
    (["seed", "--plant-fault", "spam_links@1:8:96"], ("--plant-fault", "2 or later")),
    (["seed", "--plant-fault", "nothing@3:8:96"], ("--plant-fault", "no rule 'nothing'")),
    (["seed", "--plant-fault", "spam_links@3:8:5000"], ("--plant-fault", "hours")),
    (["seed", "--plant-fault", "spam_links@3:8:96", "--plant-fault", "spam_links@4:2:9"],
     ("at most one fault per rule",)),
    (["seed", "--scenario", "history"], ("--scenario", "'history'")),
    (["seed", "--scenario", "detection", "--days", "3"], ("--days", "between 14 and 120")),
])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(
        engine: Engine, cli_env: dict[str, str], args: list[str],
        fragments: tuple[str, ...]) -> None:
    before = snapshot(engine)
    result = invoke(*args)
    assert_refused(result, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(engine) == before


# -- a suspect restores nothing ----------------------------------------------------------------

@pytest.mark.prefect
def test_a_suspect_restores_nothing_and_its_declaration_previews_as_a_dry_run(
        prefect_api: str, engine: Engine, cli_env: dict[str, str]) -> None:
    options, _ = seeded(engine, 7, scale=0.1)
    suspect = next(s for s in detect_json(options) if s["version"] == "spam_links@3")
    before = snapshot(engine)
    # Detecting changed nothing on the platform.
    args = shlex.split(suspect["preview"])
    assert args[:2] == ["reinstate", "run"] and args[-1] == "--dry-run"
    preview = invoke(*args[1:])
    assert preview.exit_code == 0, describe(preview)
    assert snapshot(engine) == before
    report = json.loads(invoke("report", suspect["key"], "--json").stdout)
    with engine.connect() as conn:
        version_id = conn.execute(select(rule_versions.c.id).where(
            rule_versions.c.rule_name == "spam_links", rule_versions.c.version == 3)
        ).scalar_one()
        standing = conn.execute(select(func.count()).select_from(enforcement_actions).where(
            enforcement_actions.c.rule_version_id == version_id,
            enforcement_actions.c.reversed_at.is_(None))).scalar_one()
    # The window is the version's life: its every standing ban previews as reinstated
    # (the corrected version's condition is false for each).
    assert standing > 500
    assert {k: v for k, v in report["preview_outcomes"].items() if v} == {
        "reinstated": standing}
    # A real run of the draft is refused until the rules team marks the version faulty.
    real = invoke("run", suspect["key"])
    assert_refused(real, "spam_links@3 is not marked faulty by the platform")
    assert snapshot(engine) == before


# -- the nightly ---------------------------------------------------------------------------------

def latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
    return str(artifact.data)


@pytest.mark.prefect
def test_the_nightly_publishes_suspects_and_alerts_each_once(
        prefect_api: str, engine: Engine, cli_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.reconcile as nightly
    import tasks.events as steps

    options, planted = seeded(engine, 8)
    emitted: list[dict[str, Any]] = []
    real_emit = steps.emit_event

    def recording_emit(**kwargs: Any) -> Any:
        emitted.append(kwargs)
        return real_emit(**kwargs)

    monkeypatch.setattr(steps, "emit_event", recording_emit)
    before = snapshot(engine)
    findings = nightly.nightly_reconciliation(detect_days=DAYS, detect_until=HISTORY_END)
    versions = sorted(f.name for f in planted)
    assert sorted(s["version"] for s in findings["faults"]["suspects"]) == versions
    assert sorted(e["resource"]["prefect.resource.name"] for e in emitted) == versions
    assert {e["event"] for e in emitted} == {steps.FAULT_SUSPECTED}
    assert snapshot(engine) == before  # a suspect restores nothing
    published = latest_artifact("fault-suspects")
    assert all(version in published for version in versions)
    assert "reinstate run SUSPECT-" in published

    emitted.clear()
    again = nightly.nightly_reconciliation(detect_days=DAYS, detect_until=HISTORY_END)
    assert sorted(s["version"] for s in again["faults"]["suspects"]) == versions
    assert emitted == []  # each suspect is alerted once
    with engine.connect() as conn:
        rows = conn.execute(select(SuspectRow.version, SuspectRow.alerted_at)).all()
    assert sorted(r.version for r in rows) == versions
    assert all(r.alerted_at is not None for r in rows)

    # An alert that could not go out is sent by the next run.
    with engine.begin() as conn:
        conn.execute(update(SuspectRow).where(SuspectRow.version == versions[0])
                     .values(alerted_at=None))
    nightly.nightly_reconciliation(detect_days=DAYS, detect_until=HISTORY_END)
    assert [e["resource"]["prefect.resource.name"] for e in emitted] == [versions[0]]
