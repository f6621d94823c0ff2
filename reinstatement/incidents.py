"""Incidents registered under their key: the request's versions resolved against the
platform's rule versions, checked, and written once.

The key is the idempotency key. It is registered with the normalised parameters; the
same key again resumes or does nothing, the same key with other parameters is refused,
saying what differs. Whether the incident needs an operator's approval is one of its
parameters, fixed when the key is first registered, so no later run can skip it. Dry run,
batch size and child runs are operational: they change how a run goes, not what the
incident means. The request itself is `incident_request.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Text, cast, insert, select

from reinstatement import account_lists
from reinstatement.conditions import ConditionError, parse_condition_json
from reinstatement.errors import BadInput
from reinstatement.incident_request import IncidentRequest, build_request
from reinstatement.models import Incident, IncidentAccount, IncidentVersion
from reinstatement.platform_schema import rule_versions
from reinstatement.store.engine import utcnow
from reinstatement.verdicts import FaultyVersion, IncidentRules


@dataclass(frozen=True)
class RegisteredIncident:
    """An incident as the steps use it: its id and key, and the rules to judge bans by."""

    id: int
    key: str
    rules: IncidentRules
    notify: bool
    has_account_list: bool
    require_approval: bool

    @property
    def versions(self) -> list[FaultyVersion]:
        return sorted(self.rules.faulty.values(), key=lambda v: v.faulty_name)


@dataclass(frozen=True)
class _RuleVersionRow:
    id: int
    name: str
    rule_name: str
    status: str
    condition_text: str


def _rule_versions(conn: Connection) -> dict[str, _RuleVersionRow]:
    rows = conn.execute(
        select(
            rule_versions.c.id,
            rule_versions.c.rule_name,
            rule_versions.c.version,
            rule_versions.c.status,
            cast(rule_versions.c.condition, Text).label("condition_text"),
        )
    )
    return {
        f"{r.rule_name}@{r.version}": _RuleVersionRow(
            r.id, f"{r.rule_name}@{r.version}", r.rule_name, r.status, r.condition_text
        )
        for r in rows
    }


def _number(row: _RuleVersionRow) -> int:
    return int(row.name.rsplit("@", 1)[1])


def _newest_active(rows: Iterable[_RuleVersionRow], faulty: _RuleVersionRow
                   ) -> _RuleVersionRow | None:
    """The newest 'active' version of the faulty version's rule, if newer than it."""
    candidates = [r for r in rows if r.rule_name == faulty.rule_name and r.status == "active"
                  and _number(r) > _number(faulty)]
    return max(candidates, key=_number, default=None)


def _faulty_version(row: _RuleVersionRow, corrected: _RuleVersionRow | None) -> FaultyVersion:
    condition = None
    if corrected is not None:
        try:
            condition = parse_condition_json(corrected.condition_text)
        except ConditionError as exc:
            raise BadInput(f"{corrected.name}: {exc}") from None
    return FaultyVersion(
        faulty_version_id=row.id,
        faulty_name=row.name,
        corrected_version_id=None if corrected is None else corrected.id,
        corrected_name=None if corrected is None else corrected.name,
        corrected_condition=condition,
    )


def resolve_versions(conn: Connection, specs: Sequence[str], *, previewing: bool = False
                     ) -> list[FaultyVersion]:
    """Check each faulty version and find its corrected version; BadInput if any is wrong.

    A real run names only versions the platform marks 'faulty'; a dry run (`previewing`)
    may name any version, so that an operator can preview a suspect of `reinstate detect`
    before the rules team marks it (a preview changes nothing)."""
    known = _rule_versions(conn)
    faulty_names = {spec.split("=")[0] for spec in specs}
    resolved = []
    for spec in specs:
        faulty_name, _, corrected_name = spec.partition("=")
        faulty = known.get(faulty_name)
        if faulty is None:
            raise BadInput(f"unknown rule version {faulty_name}")
        if faulty.status != "faulty" and not previewing:
            raise BadInput(_not_marked(faulty))
        if corrected_name:
            corrected = known.get(corrected_name)
            if corrected is None:
                raise BadInput(f"unknown rule version {corrected_name} (named as the "
                               f"corrected version of {faulty_name})")
            if corrected.rule_name != faulty.rule_name:
                raise BadInput(f"{corrected_name} cannot correct {faulty_name}: it is a "
                               f"version of another rule")
            if corrected.status == "faulty":
                raise BadInput(f"{corrected_name} cannot correct {faulty_name}: its status "
                               f"is 'faulty'")
            if _number(corrected) <= _number(faulty):
                raise BadInput(f"{corrected_name} cannot correct {faulty_name}: a corrected "
                               "version is a newer version of the same rule")
        else:
            corrected = _newest_active(known.values(), faulty)
        if corrected is not None and corrected.name in faulty_names:
            raise BadInput(f"{corrected.name} is named faulty, so it cannot be the corrected "
                           f"version of {faulty_name}")
        if corrected is not None and corrected.id == faulty.id:
            raise BadInput(f"{faulty_name} cannot correct itself")
        resolved.append(_faulty_version(faulty, corrected))
    return resolved


def _not_marked(row: _RuleVersionRow) -> str:
    return (f"{row.name} is not marked faulty by the platform (its status is "
            f"{row.status!r}): a real run restores only from versions the rules team "
            "marked 'faulty' in rule_versions (a --dry-run may preview any version)")


def require_marked_faulty(conn: Connection, specs: Sequence[str]) -> None:
    """BadInput unless the platform marks every named faulty version 'faulty'."""
    known = _rule_versions(conn)
    for spec in specs:
        row = known.get(spec.split("=")[0])
        if row is not None and row.status != "faulty":
            raise BadInput(_not_marked(row))


def _differences(registered: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    differences = []
    for name in sorted(set(registered) | set(requested)):
        before, after = registered.get(name), requested.get(name)
        if before != after:
            differences.append(
                f"{name}: registered {json.dumps(before)}, this run {json.dumps(after)}"
            )
    return differences


def register_incident(conn: Connection, request: IncidentRequest,
                      declared_by: str | None = None, declared_via: str | None = None
                      ) -> RegisteredIncident:
    """Register the incident under its key, or check a rerun asks for the same thing.

    Idempotent: the first run writes the incident with its resolved versions, its account
    list and who declared it; a later run with the same parameters returns the same
    incident.
    """
    parameters = request.parameters()
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()
    registered = conn.execute(
        select(Incident.id).where(Incident.key == request.incident_key)
    ).scalar_one_or_none()
    check_request(conn, request)
    if registered is not None:
        return load_incident(conn, request.incident_key)
    versions = resolve_versions(conn, request.faulty_versions, previewing=request.dry_run)
    now = utcnow()
    incident_id = conn.execute(
        insert(Incident)
        # The status starts as the column's default, 'registered': every later change of
        # it is a transition of reinstatement.lifecycle.
        .values(key=request.incident_key, params=parameters, params_digest=digest,
                declared_by=declared_by, declared_via=declared_via,
                created_at=now, updated_at=now)
        .returning(Incident.id)
    ).scalar_one()
    conn.execute(insert(IncidentVersion), [
        {"incident_id": incident_id, "faulty_rule_version_id": v.faulty_version_id,
         "faulty_name": v.faulty_name, "corrected_rule_version_id": v.corrected_version_id,
         "corrected_name": v.corrected_name}
        for v in versions
    ])
    if request.account_ids is not None:
        ids = request.account_ids
        for start in range(0, len(ids), 10_000):
            conn.execute(insert(IncidentAccount), [
                {"incident_id": incident_id, "account_id": i} for i in ids[start:start + 10_000]
            ])
    elif request.account_list is not None:
        account_lists.copy_to_incident(conn, account_lists.parse_reference(
            request.account_list), incident_id)
    return load_incident(conn, request.incident_key)


def load_incident(conn: Connection, key: str) -> RegisteredIncident:
    """The registered incident under `key`, with its rules; BadInput if there is none."""
    incident = conn.execute(
        select(Incident.id, Incident.key, Incident.params).where(Incident.key == key)
    ).one_or_none()
    if incident is None:
        raise BadInput(f"no incident registered under the key {key!r}")
    known = {row.id: row for row in _rule_versions(conn).values()}
    faulty: dict[int, FaultyVersion] = {}
    for v in conn.execute(
        select(IncidentVersion.faulty_rule_version_id, IncidentVersion.faulty_name,
               IncidentVersion.corrected_rule_version_id)
        .where(IncidentVersion.incident_id == incident.id)
    ):
        corrected = None if v.corrected_rule_version_id is None else known.get(
            v.corrected_rule_version_id)
        row = known.get(v.faulty_rule_version_id)
        if row is None:
            raise BadInput(f"rule version {v.faulty_name} of incident {key} no longer exists")
        faulty[v.faulty_rule_version_id] = _faulty_version(row, corrected)
    params = incident.params
    return RegisteredIncident(
        id=incident.id,
        key=incident.key,
        rules=IncidentRules(
            faulty=faulty,
            since=_parse_iso(params.get("since")),
            until=_parse_iso(params.get("until")),
        ),
        notify=bool(params.get("notify", True)),
        has_account_list=params.get("account_ids") is not None,
        require_approval=bool(params.get("require_approval", True)),
    )


def _parse_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def check_request(conn: Connection, request: IncidentRequest) -> None:
    """Everything `register_incident` would refuse, checked without writing anything."""
    existing = conn.execute(
        select(Incident.params).where(Incident.key == request.incident_key)
    ).scalar_one_or_none()
    if existing is not None:
        differences = _differences(existing, request.parameters())
        if differences:
            raise BadInput(
                f"incident {request.incident_key} is already registered with other "
                f"parameters ({'; '.join(differences)}): use a new key for a new incident"
            )
        if not request.dry_run:
            require_marked_faulty(conn, request.faulty_versions)
        return
    resolve_versions(conn, request.faulty_versions, previewing=request.dry_run)


def registered_parameters(conn: Connection, key: str) -> dict[str, Any] | None:
    """The parameters `key` was registered with; None when it is not registered."""
    params = conn.execute(select(Incident.params).where(Incident.key == key)
                          ).scalar_one_or_none()
    return None if params is None else dict(params)


def registered_request(conn: Connection, key: str, **operational: Any) -> IncidentRequest:
    """A request that continues the incident registered under `key` exactly as registered,
    with these operational fields (dry run, batch size, child runs). BadInput if none."""
    params = registered_parameters(conn, key)
    if params is None:
        raise BadInput(f"no incident registered under the key {key!r}: declare it with "
                       "--faulty (and --since, --until) the first time")
    listed = params.get("account_ids")
    account_list = None if listed is None else f"{listed['count']}:{listed['sha256']}"
    return build_request(
        incident_key=key, faulty_versions=params["faulty_versions"],
        since=_parse_iso(params.get("since")), until=_parse_iso(params.get("until")),
        account_list=account_list, notify=bool(params.get("notify", True)),
        require_approval=bool(params.get("require_approval", True)), **operational)
