"""The synthetic incident: deterministic, realistic, and only ever into an empty platform."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import Engine, select

from reinstatement.platform_schema import accounts, enforcement_actions, pins
from reinstatement.seed import (
    HOSTILE_DISPLAY_NAMES,
    KINDS,
    PlatformNotEmptyError,
    SeedOptions,
    seed,
)
from reinstatement.store.engine import make_engine
from tests.conftest import BACKENDS, require_backend
from tests.factories import snapshot


def test_every_kind_of_account_is_seeded(engine: Engine) -> None:
    summary = seed(engine, SeedOptions(accounts=3000, seed=11))
    assert set(summary.kinds) == {kind for kind, _, _ in KINDS}
    assert summary.accounts == 3000
    assert 4 <= summary.pins / summary.accounts <= 6
    with engine.connect() as conn:
        rows = conn.execute(select(accounts.c.display_name, accounts.c.email,
                                   accounts.c.locale, accounts.c.status)).all()
        pin_states = Counter(conn.execute(
            select(pins.c.status, pins.c.hidden_by_action_id.is_(None))).all())
        sources = Counter(conn.execute(select(enforcement_actions.c.kind,
                                              enforcement_actions.c.source)).scalars())
    names = {r.display_name for r in rows}
    assert set(HOSTILE_DISPLAY_NAMES) <= names
    assert None in names and any(r.email is None for r in rows)
    assert {"en", "pt-BR", "ja", "ko"} <= {r.locale for r in rows}
    assert {r.status for r in rows} == {"active", "banned", "deleted", "deactivated"}
    # hidden by a ban, hidden by the owner (no action), visible, deleted
    assert pin_states[("hidden", False)] and pin_states[("hidden", True)]
    assert pin_states[("visible", True)] and pin_states[("deleted", True)]
    assert sources["ban"] and sources["unban"]


def test_same_seed_writes_the_same_rows_on_both_databases(tmp_path: object) -> None:
    from tests.conftest import _Templates  # noqa: PLC0415 - the session helper, reused

    snapshots = []
    for backend in BACKENDS:
        require_backend(backend)
    holder = _Templates(tmp_path)  # type: ignore[arg-type]
    try:
        for backend in BACKENDS * 2:
            url = holder.new_database(backend)
            engine = make_engine(url)
            seed(engine, SeedOptions(accounts=300, seed=5))
            snapshots.append(snapshot(engine))
            engine.dispose()
    finally:
        holder.drop_all()
    assert all(s == snapshots[0] for s in snapshots[1:])


def test_another_seed_writes_other_rows(engine: Engine, db_url: str) -> None:
    seed(engine, SeedOptions(accounts=200, seed=1))
    first = snapshot(engine)
    with engine.begin() as conn:
        for table in (pins, enforcement_actions, accounts):
            if table is enforcement_actions:
                conn.execute(table.update().values(reversed_by_action_id=None))
            conn.execute(table.delete())
        from reinstatement.platform_schema import rule_versions
        conn.execute(rule_versions.delete())
    seed(engine, SeedOptions(accounts=200, seed=2))
    assert snapshot(engine) != first


def test_seed_refuses_a_platform_that_holds_rows(engine: Engine) -> None:
    seed(engine, SeedOptions(accounts=20))
    before = snapshot(engine)
    with pytest.raises(PlatformNotEmptyError, match="already holds rows"):
        seed(engine, SeedOptions(accounts=20))
    assert snapshot(engine) == before


@pytest.mark.parametrize("accounts_count", [0, -1, 60_000_000])
def test_absurd_sizes_are_refused(accounts_count: int) -> None:
    with pytest.raises(ValueError, match="accounts"):
        SeedOptions(accounts=accounts_count)
