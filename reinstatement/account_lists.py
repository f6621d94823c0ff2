"""Lists of account ids an operator names: staged in the database, named by their digest.

An incident may judge exactly the accounts an operator lists, up to 5,000,000 of them. A
list that long cannot travel as a flow run's parameter (Prefect refuses parameters over
512 KB, about 76,500 ids), so the command line, the nightly reconciliation and a run
reading an accounts file first stage the list in the database and pass the run a
reference to it, `COUNT:SHA256`: its number of ids and the sha256 of the ids, distinct,
ascending, comma-separated (the same digest an incident's parameters hold, so a list
given either way registers the same incident). Registration copies the staged list into
the incident's own accounts. A staged list is written once per digest and never changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Connection, Engine, bindparam, insert, select

from reinstatement.errors import BadInput
from reinstatement.incident_request import digest_of
from reinstatement.models import AccountList, AccountListMember, IncidentAccount
from reinstatement.retrying import in_transaction
from reinstatement.store import queries, store_for
from reinstatement.store.engine import utcnow

MAX_IDS = 5_000_000
REFERENCE_PATTERN = r"^[0-9]{1,7}:[0-9a-f]{64}$"
_REFERENCE = re.compile(REFERENCE_PATTERN)
_CHUNK = 10_000


@dataclass(frozen=True)
class ListReference:
    count: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.count}:{self.sha256}"


def parse_reference(text: str) -> ListReference:
    """A `COUNT:SHA256` reference; BadInput when it is not one."""
    if not _REFERENCE.fullmatch(text.strip()):
        raise BadInput(f"account_list: {text!r} is not COUNT:SHA256 (a list staged by the "
                       "command line or the nightly reconciliation)")
    count, digest = text.strip().split(":")
    return ListReference(int(count), digest)


def normalised(ids: Iterable[int]) -> list[int]:
    """The ids as a list holds them: distinct, ascending."""
    return sorted(set(ids))


def reference_of(members: Sequence[int]) -> ListReference:
    """The reference of normalised ids (nothing is written); BadInput for an empty or too
    long list."""
    if not members:
        raise BadInput("the list of account ids is empty")
    if len(members) > MAX_IDS:
        raise BadInput(f"{len(members):,} account ids: at most {MAX_IDS:,}")
    return ListReference(len(members), digest_of(members))


def stage(engine: Engine, ids: Iterable[int]) -> ListReference:
    """Stage the list in the database (once per digest); its reference."""
    members = normalised(ids)
    reference = reference_of(members)

    def work(conn: Connection) -> None:
        if _list_id(conn, reference) is not None:
            return
        list_id = int(conn.execute(insert(AccountList).values(
            sha256=reference.sha256, count=reference.count, created_at=utcnow())
            .returning(AccountList.id)).scalar_one())
        _write_members(conn, list_id, members)

    in_transaction(engine, work)
    return reference


def _list_id(conn: Connection, reference: ListReference) -> int | None:
    row = conn.execute(select(AccountList.id, AccountList.count).where(
        AccountList.sha256 == reference.sha256)).first()
    if row is None:
        return None
    if row.count != reference.count:
        raise BadInput(f"account_list: the list staged as {reference.sha256} holds "
                       f"{row.count:,} ids, not {reference.count:,}")
    return int(row.id)


def _write_members(conn: Connection, list_id: int, members: Sequence[int]) -> None:
    if store_for(conn).bulk_copy:
        # COPY: 5,000,000 ids in seconds, where an INSERT per chunk took a minute.
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(
                queries.sql(conn, "copy_list_members")) as copy:
            for start in range(0, len(members), 100_000):
                copy.write("".join(f"{list_id}\t{account_id}\n"
                                   for account_id in members[start:start + 100_000]))
        return
    for start in range(0, len(members), _CHUNK):
        conn.execute(insert(AccountListMember), [
            {"list_id": list_id, "account_id": account_id}
            for account_id in members[start:start + _CHUNK]])


def copy_to_incident(conn: Connection, reference: ListReference, incident_id: int) -> None:
    """The staged list becomes the incident's accounts, in one statement."""
    list_id = _list_id(conn, reference)
    if list_id is None:
        raise BadInput(f"account_list: no list of {reference.count:,} ids is staged as "
                       f"{reference.sha256}: stage it again (run the command again)")
    conn.execute(insert(IncidentAccount).from_select(
        ["incident_id", "account_id"],
        select(bindparam(None, incident_id, type_=BigInteger), AccountListMember.account_id)
        .where(AccountListMember.list_id == list_id)))
