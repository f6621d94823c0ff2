"""Building platform scenarios for tests: rule versions, accounts, bans and pins."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Connection, Engine, Table, Text, cast, insert, select

from reinstatement.conditions import decode_evidence
from reinstatement.incident_request import IncidentRequest, build_request
from reinstatement.platform_schema import accounts, enforcement_actions, pins, rule_versions
from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_KEY, INCIDENT_SINCE, INCIDENT_UNTIL

T0 = datetime(2025, 4, 5, 12, 0, tzinfo=UTC)
SPAM_FAULTY = {"any": [{"signal": "links", "op": ">=", "value": 5}]}
SPAM_CORRECTED = {"all": [{"signal": "links", "op": ">=", "value": 50},
                          {"signal": "verified", "op": "==", "value": False}]}
WRONGFUL = {"links": 10, "verified": True}
CONFIRMED = {"links": 80, "verified": False}
UNCERTAIN = {"links": 80}
_serials = itertools.count(1)


@dataclass
class Platform:
    """A small platform written through one connection; the database numbers the rows."""

    conn: Connection

    def _insert(self, table: Table, **values: Any) -> int:
        return int(self.conn.execute(insert(table).values(**values).returning(table.c.id)
                                     ).scalar_one())

    def rule(self, name: str, version: int, status: str, condition: Any,
             deployed_at: datetime = T0 - timedelta(days=30)) -> int:
        return self._insert(rule_versions, rule_name=name, version=version, status=status,
                            condition=condition, deployed_at=deployed_at)

    def account(self, status: str = "banned", *, email: str | None = "user@example.test",
                locale: str = "en", display_name: str | None = "A user",
                username: str | None = None) -> int:
        serial = next(_serials)
        return self._insert(
            accounts, username=username or f"user{serial}", display_name=display_name,
            email=email.replace("user@", f"user{serial}@") if email else None, locale=locale,
            status=status, updated_at=T0 - timedelta(days=1))

    def ban(self, account_id: int, rule_version_id: int | None, evidence: Any = None, *,
            source: str = "rule", created_at: datetime = T0, reversed_by: int | None = None,
            reversed_at: datetime | None = None) -> int:
        return self._insert(
            enforcement_actions, account_id=account_id, kind="ban", source=source,
            rule_version_id=rule_version_id,
            actor="rules-engine" if source == "rule" else "mod_alex",
            reason="test ban", evidence=evidence, created_at=created_at,
            reversed_at=reversed_at, reversed_by_action_id=reversed_by)

    def unban(self, account_id: int, at: datetime = T0 + timedelta(days=1)) -> int:
        return self._insert(
            enforcement_actions, account_id=account_id, kind="unban", source="moderator",
            actor="mod_bea", reason="appeal", evidence=None, created_at=at)

    def pin(self, account_id: int, status: str = "hidden", hidden_by: int | None = None
            ) -> int:
        return self._insert(pins, account_id=account_id, title="a pin", status=status,
                            hidden_by_action_id=hidden_by, updated_at=T0)


def seeded_incident_request(**overrides: Any) -> IncidentRequest:
    """The request for the incident `reinstatement.seed` writes, with small batches."""
    fields: dict[str, Any] = {
        "incident_key": INCIDENT_KEY,
        "faulty_versions": list(INCIDENT_FAULTY),
        "since": INCIDENT_SINCE,
        "until": INCIDENT_UNTIL,
        "batch_size": 100,
        "require_approval": False,
    }
    fields.update(overrides)
    return build_request(**fields)


def snapshot(engine: Engine) -> dict[str, dict[int, dict[str, Any]]]:
    """Every platform row, by table and id.

    JSON columns are read as text and decoded by the pipeline's own safe decoder, so a
    poisoned value (which the driver's decoder refuses) is compared like any other.
    """
    result: dict[str, dict[int, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in (accounts, rule_versions, enforcement_actions, pins):
            json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
            columns = [cast(c, Text).label(c.name) if c.name in json_columns else c
                       for c in table.columns]
            result[table.name] = {
                row["id"]: {name: decode_evidence(value) if name in json_columns else value
                            for name, value in row.items()}
                for row in conn.execute(select(*columns)).mappings()
            }
    return result


def changed_rows(before: dict[str, dict[int, dict[str, Any]]],
                 after: dict[str, dict[int, dict[str, Any]]]
                 ) -> dict[str, dict[int, dict[str, tuple[Any, Any]]]]:
    """Per table and id, the columns that differ (new rows: every column from None)."""
    changes: dict[str, dict[int, dict[str, tuple[Any, Any]]]] = {}
    for table, rows in after.items():
        old_rows = before.get(table, {})
        for row_id, row in rows.items():
            old = old_rows.get(row_id, {})
            diff = {k: (old.get(k), v) for k, v in row.items() if old.get(k) != v}
            if diff:
                changes.setdefault(table, {})[row_id] = diff
        for row_id in set(old_rows) - set(rows):
            changes.setdefault(table, {})[row_id] = {"deleted": (True, None)}
    return changes


def planned_seeded_incident(engine: Engine, accounts: int = 1500, seed_number: int = 4
                            ) -> tuple[Any, list[Any]]:
    """The seed's incident on `accounts` seeded accounts, registered and planned: the
    incident and its cases as the steps claim them."""
    from reinstatement import claims, runner
    from reinstatement.models import Case
    from reinstatement.seed import SeedOptions, seed

    seed(engine, SeedOptions(accounts=accounts, seed=seed_number))
    request = build_request(incident_key=INCIDENT_KEY, faulty_versions=list(INCIDENT_FAULTY),
                            since=INCIDENT_SINCE, until=INCIDENT_UNTIL, batch_size=500,
                            require_approval=False)
    incident = runner.register(engine, request, "test")
    runner.plan_all(runner.StepContext(engine, incident, 500))
    with engine.connect() as conn:
        cases = [claims.ClaimedCase(row.id, row.account_id, row.state, row.outcome, None,
                                   row.round)
                 for row in conn.execute(select(Case).order_by(Case.id))]
    return incident, cases


APPROVER = "ana"  # the tests' declarer is the OS login running them; ana is someone else


def approve(engine: Engine, key: str = INCIDENT_KEY, by: str = APPROVER,
            note: str = "samples read") -> Any:
    """Approve the incident's newest plan, as `by` on the command line; the plan."""
    from reinstatement import approval, runner
    from reinstatement.incidents import load_incident

    with engine.connect() as conn:
        incident = load_incident(conn, key)
    _, plan = runner.decide(engine, incident, "approve",
                            approval.Identity(by, approval.VIA_CLI), note=note)
    return plan


WRONGFUL_SPAM_EVIDENCE = {"links_per_hour": 9, "repeat_text_ratio": 0.1,
                          "verified_email": True}


def wrongly_banned_now(engine: Engine) -> int:
    """A new account of the seeded platform, banned by spam_burst@7 inside the seeded
    incident's window on evidence its correction (spam_burst@8) finds false: a candidate
    that appears after a preview, reinstated once an approved plan holds it."""
    from datetime import timedelta

    from reinstatement.seed import RULE_ID

    with engine.begin() as conn:
        platform = Platform(conn)
        account = platform.account()
        ban = platform.ban(account, RULE_ID["spam_burst@7"], WRONGFUL_SPAM_EVIDENCE,
                           created_at=INCIDENT_SINCE + timedelta(days=3))
        platform.pin(account, hidden_by=ban)
    return account
