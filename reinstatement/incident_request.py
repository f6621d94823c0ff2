"""What an operator asks for: an incident's request, as the CLI, the UI's form and the
nightly give it, checked field by field before anything touches a database.

An incident names faulty rule versions, each with the version that corrects it (by
default the newest 'active' version of the same rule), optionally a window on the bans'
created_at (half-open: since <= created_at < until) and optionally an explicit list of
account ids (or an accounts file, read by `read_account_ids`). A request that cannot be
carried out exactly as meant is refused as `BadInput` with nothing written.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reinstatement.errors import BadInput

BIGINT_MAX = 2**63 - 1
MAX_LISTED_IDS = 50_000  # in the request itself; longer lists are staged (account_lists.py)
ACCOUNT_LIST_PATTERN = r"^[0-9]{1,7}:[0-9a-f]{64}$"
INCIDENT_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,199}$"
_VERSION_NAME = r"[A-Za-z0-9_.\-]{1,100}@\d{1,9}"
FAULTY_SPEC_PATTERN = re.compile(
    rf"^(?P<faulty>{_VERSION_NAME})(?:=(?P<corrected>{_VERSION_NAME}))?$"
)
# The same, for the parameter form (JSON Schema's regular expressions have no named
# groups); spaces around an item are allowed and stripped.
FAULTY_ITEM_PATTERN = rf"^\s*{_VERSION_NAME}(={_VERSION_NAME})?\s*$"
# The patterns go into the form's schema only (json_schema_extra): there Prefect refuses a
# bad value before any run exists. Here the validators below say what is wrong in words,
# for the CLI and for a run started through the API.
FaultySpec = Annotated[str, Field(
    json_schema_extra={"pattern": FAULTY_ITEM_PATTERN}, title="rule@version",
    description="A faulty rule version as rule@version (spam_burst@7), or "
    "rule@version=rule@version to name its correction (spam_burst@7=spam_burst@8).")]


def digest_of(ids: Sequence[int]) -> str:
    """The sha256 of normalised ids, comma-separated (an incident's parameters hold it)."""
    digest = hashlib.sha256()
    for start in range(0, len(ids), 100_000):
        chunk = ",".join(map(str, ids[start:start + 100_000]))
        digest.update((("," if start else "") + chunk).encode())
    return digest.hexdigest()


def _form_schema(schema: dict[str, Any]) -> None:
    """The form asks who declares the incident: a run from the UI or the API names them.
    (In Python the field may stay empty: the command line knows who runs it.)"""
    schema.setdefault("required", [])
    if "declared_by" not in schema["required"]:
        schema["required"].append("declared_by")


class IncidentRequest(BaseModel):
    """What an operator asks the pipeline to do about one incident."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_form_schema)

    incident_key: str = Field(
        ...,
        title="Incident key",
        description="Your name for the incident, e.g. INC-2025-04-spam: up to 200 "
        "letters, digits and the signs . _ : - (no spaces), starting with a letter or a "
        "digit. Running the same key again resumes that incident.",
        json_schema_extra={"pattern": INCIDENT_KEY_PATTERN},
    )
    declared_by: str = Field(
        "",
        title="Declared by",
        description="Your name or handle: who declares this incident (kept in the audit "
        "trail and on the report). Someone else approves it. The command line knows who "
        "runs it.",
        max_length=100,
        # In the form's schema only (required there, see _form_schema): the UI refuses a
        # missing or blank name before any run exists.
        json_schema_extra={"minLength": 1, "pattern": r"\S"},
    )
    faulty_versions: list[FaultySpec] = Field(
        ...,
        title="Faulty rule versions",
        description="One item per faulty version, each written rule@version with the "
        "version number, e.g. spam_burst@7; or rule@version=rule@version to name the "
        "version that corrects it (default: the newest active version of the rule). "
        "'spam_burst' alone, without @ and a number, is refused.",
        min_length=1,
        max_length=100,
    )
    since: datetime | None = Field(
        None,
        title="Bans created from",
        description="Only bans created at or after this moment. In the UI switch None to "
        "date-time, then pick the day and time and the time zone under it (UTC by "
        "default); on the command line give ISO 8601 with a zone, e.g. "
        "2025-04-01T00:00:00Z. None: no start.",
    )
    until: datetime | None = Field(
        None,
        title="Bans created before",
        description="Only bans created before this moment; it must be after the start. "
        "In the UI switch None to date-time and pick the day, time and time zone; on the "
        "command line give ISO 8601 with a zone, e.g. 2025-04-15T00:00:00Z. None: no end.",
    )
    account_ids: list[int] | None = Field(
        None,
        title="Only these accounts",
        description="Leave empty to find candidates from the bans; otherwise exactly these "
        "account ids are judged (up to 50,000 here: for a longer list, up to 5,000,000, "
        "give an accounts file).",
        max_length=MAX_LISTED_IDS,
    )
    accounts_file: str | None = Field(
        None,
        title="Accounts file",
        description="Instead of listing them: the path of a file of account ids, one per "
        "line (# comments allowed), on the machine that runs the incident. Up to "
        "5,000,000 ids; exactly these are judged.",
        max_length=4096,
    )
    account_list: str | None = Field(
        None,
        title="Staged account list",
        description="Filled in by the command line and the nightly reconciliation: a list "
        "of account ids they staged in the database, as COUNT:SHA256. Leave empty.",
        json_schema_extra={"pattern": ACCOUNT_LIST_PATTERN},
    )
    notify: bool = Field(True, title="Notify users", description="Email each reinstated user.")
    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Only preview the outcomes: nothing on the platform changes.",
    )
    batch_size: int = Field(
        5000,
        title="Batch size",
        description="Cases per batch task.",
        ge=1,
        le=50_000,
    )
    child_runs: int = Field(
        1,
        title="Child runs per step",
        description="1: this run works through each step's batches itself. More: each "
        "step (verify, restore, notify) is fanned out to this many child runs of the "
        "incident-step deployment, which any worker of its work pool can take; they share "
        "the batches. Limits across them all: the global concurrency limits.",
        ge=1,
        le=32,
    )
    require_approval: bool = Field(
        True,
        title="Require approval",
        description="Restore nothing until another person approves the plan this run "
        "previews (on by default for runs started from the UI; the CLI asks for it "
        "explicitly). Fixed for the incident when its key is first registered.",
    )

    @field_validator("incident_key")
    @classmethod
    def _key(cls, key: str) -> str:
        if not re.fullmatch(INCIDENT_KEY_PATTERN, key):
            raise ValueError(
                f"{key!r} is not an incident key: use up to 200 letters, digits and the "
                "signs . _ : - (no spaces), starting with a letter or a digit, e.g. "
                "INC-2025-04-spam")
        return key

    @field_validator("faulty_versions")
    @classmethod
    def _faulty_specs(cls, specs: list[str]) -> list[str]:
        cleaned = []
        for spec in specs:
            spec = spec.strip()
            if not FAULTY_SPEC_PATTERN.fullmatch(spec):
                raise ValueError(
                    f"{spec!r} is not rule@version or rule@version=rule@version"
                )
            cleaned.append(spec)
        faulty = [s.split("=")[0] for s in cleaned]
        twice = sorted({name for name in faulty if faulty.count(name) > 1})
        if twice:
            raise ValueError(f"named more than once: {', '.join(twice)}")
        return cleaned

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, moment: datetime | None) -> datetime | None:
        if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
            raise ValueError(
                f"{moment.isoformat()} has no time zone: add Z or an offset such as +00:00"
            )
        if moment is not None:
            try:
                moment.astimezone(UTC)
            except OverflowError:
                raise ValueError(f"{moment.isoformat()} is out of range in UTC") from None
        return moment

    @field_validator("account_ids")
    @classmethod
    def _account_ids(cls, ids: list[int] | None) -> list[int] | None:
        if ids is None:
            return None
        if not ids:
            raise ValueError("the list of account ids is empty")
        bad = [i for i in ids if not 1 <= i <= BIGINT_MAX]
        if bad:
            raise ValueError(f"not an account id: {bad[0]}")
        return sorted(set(ids))

    @field_validator("account_list")
    @classmethod
    def _account_list(cls, reference: str | None) -> str | None:
        if reference is not None and not re.fullmatch(ACCOUNT_LIST_PATTERN, reference):
            raise ValueError(f"{reference!r} is not COUNT:SHA256 (leave it empty)")
        return reference

    @model_validator(mode="after")
    def _one_list(self) -> IncidentRequest:
        given = [name for name in ("account_ids", "accounts_file", "account_list")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one list of accounts, not {' and '.join(given)}")
        return self

    @model_validator(mode="after")
    def _window(self) -> IncidentRequest:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError(
                f"the window ends ({self.until.isoformat()}) before it starts "
                f"({self.since.isoformat()})"
            )
        return self

    def parameters(self) -> dict[str, Any]:
        """The normalised parameters that the incident key is registered with. A list of
        accounts counts by its number of ids and digest, however it was given (an accounts
        file is staged first: `account_lists`)."""
        listed: dict[str, Any] | None = None
        if self.account_ids is not None:
            listed = {"count": len(self.account_ids),
                      "sha256": digest_of(self.account_ids)}
        elif self.account_list is not None:
            count, digest = self.account_list.split(":")
            listed = {"count": int(count), "sha256": digest}
        elif self.accounts_file is not None:
            raise RuntimeError("an accounts file is staged before the incident's parameters "
                               "are read (account_lists.stage)")
        return {
            "faulty_versions": sorted(self.faulty_versions),
            "since": _iso(self.since),
            "until": _iso(self.until),
            "account_ids": listed,
            "notify": self.notify,
            "require_approval": self.require_approval,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def build_request(**fields: Any) -> IncidentRequest:
    """An IncidentRequest, with pydantic's errors turned into one clear `BadInput`."""
    try:
        return IncidentRequest(**fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "request"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise BadInput("; ".join(problems)) from None


def read_account_ids(path: Path) -> list[int]:
    """Account ids from an operator's file: one per line, blank lines and # comments allowed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the accounts file {str(path)!r}: {exc.strerror}") from None
    try:
        content = raw.decode("utf-8-sig")  # a byte order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    ids: list[int] = []
    # Lines end at LF (CR LF too: strip() takes the CR) and nowhere else, so that the line
    # numbers in messages are the ones an editor shows.
    for number, line in enumerate(content.split("\n"), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not re.fullmatch(r"[0-9]{1,19}", entry) or not 1 <= int(entry) <= BIGINT_MAX:
            shown = entry if len(entry) <= 40 else entry[:40] + "…"
            raise BadInput(f"{path}, line {number}: not an account id: {shown!r}")
        ids.append(int(entry))
    if not ids:
        raise BadInput(f"{path}: no account ids in the file")
    return ids


