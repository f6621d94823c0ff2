"""Synthetic incidents: a realistic mass-ban written into an empty platform database.

The story: `spam_burst@7` went out on 2025-04-01 with a condition far too broad and
banned tens of thousands of ordinary accounts until `spam_burst@8` replaced it on
2025-04-15; `image_hash@2` matched near-duplicate images too loosely in the same two
weeks. Around the wrongly banned accounts the seed puts every kind of account the
contract tells apart, so a run of the incident below exercises every outcome:

    reinstate run INC-2025-04-spam --faulty spam_burst@7 --faulty image_hash@2 \\
        --since 2025-04-01T00:00:00Z --until 2025-04-15T00:00:00Z

The "mixed" shape (`SeedOptions(shape="mixed")`, `reinstate seed --shape mixed`) is the
same story as a real platform's incident holds it: the incident also names `link_farm@1`,
which has no corrected version (its cases go to review), some accounts were banned by it
inside the window, every rules-engine ban's evidence carries twenty more signals than the
rules read, and most banned accounts carry older bans that moderators reversed.

Accounts, bans and pins are drawn from `random.Random(seed)`, so the same seed and
size write the same rows. PostgreSQL is loaded with COPY (a million accounts with five
million pins in a couple of minutes); SQLite, meant for small local incidents, with
batched inserts.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text

from reinstatement.platform_schema import (
    accounts,
    enforcement_actions,
    pins,
    rule_versions,
)

INCIDENT_KEY = "INC-2025-04-spam"
INCIDENT_FAULTY = ("spam_burst@7", "image_hash@2")
SHAPES = ("standard", "mixed")
# The mixed shape's incident also names a faulty version with no corrected version.
MIXED_FAULTY = (*INCIDENT_FAULTY, "link_farm@1")
INCIDENT_SINCE = datetime(2025, 4, 1, tzinfo=UTC)
INCIDENT_UNTIL = datetime(2025, 4, 15, tzinfo=UTC)
SEED_NOW = datetime(2025, 5, 2, 9, 30, tzinfo=UTC)  # fixed: the same seed writes the same rows

# Rule versions: (id, rule_name, version, status, deployed_at, condition)
RULE_VERSIONS: tuple[tuple[int, str, int, str, datetime, dict[str, Any]], ...] = (
    (1, "spam_burst", 6, "retired", datetime(2024, 11, 4, tzinfo=UTC),
     {"signal": "links_per_hour", "op": ">=", "value": 100}),
    (2, "spam_burst", 7, "faulty", INCIDENT_SINCE,
     {"any": [{"signal": "links_per_hour", "op": ">=", "value": 5},
              {"signal": "repeat_text_ratio", "op": ">", "value": 0.3}]}),
    (3, "spam_burst", 8, "active", INCIDENT_UNTIL,
     {"all": [{"signal": "links_per_hour", "op": ">=", "value": 40},
              {"signal": "repeat_text_ratio", "op": ">", "value": 0.8},
              {"signal": "verified_email", "op": "==", "value": False}]}),
    (4, "image_hash", 2, "faulty", datetime(2025, 3, 28, tzinfo=UTC),
     {"signal": "hash_distance", "op": "<=", "value": 12}),
    (5, "image_hash", 3, "active", INCIDENT_UNTIL,
     {"all": [{"signal": "hash_distance", "op": "<=", "value": 2},
              {"signal": "hash_list", "op": "in",
               "value": ["counterfeit_catalog", "known_spam_kit"]}]}),
    (6, "harassment", 4, "active", datetime(2024, 9, 12, tzinfo=UTC),
     {"all": [{"signal": "reports_24h", "op": ">=", "value": 10},
              {"not": {"signal": "reporter_overlap", "op": ">", "value": 0.9}}]}),
    (7, "link_farm", 1, "faulty", datetime(2025, 2, 1, tzinfo=UTC),
     {"signal": "outbound_domains", "op": "<", "value": 3}),
)
RULE_ID = {f"{name}@{version}": rid for rid, name, version, *_ in RULE_VERSIONS}


def incident_faulty(shape: str = "standard") -> tuple[str, ...]:
    """The faulty versions the seeded incident of a shape names."""
    return MIXED_FAULTY if shape == "mixed" else INCIDENT_FAULTY


def incident_description(shape: str = "standard") -> list[str]:
    """The seeded incident in words: what an operator types to reinstate it."""
    active = {name: f"{name}@{version}" for _, name, version, status, *_ in RULE_VERSIONS
              if status == "active"}
    faulty_versions = incident_faulty(shape)
    lines = [f"the seeded incident: {INCIDENT_KEY}"]
    for faulty in faulty_versions:
        rule = faulty.split("@")[0]
        lines.append(f"  faulty {faulty}, corrected by {active[rule]} (the newest active "
                     "version of the rule)" if rule in active else
                     f"  faulty {faulty}, with no corrected version: its cases go to review")
    since, until = INCIDENT_SINCE.isoformat(), INCIDENT_UNTIL.isoformat()
    lines.append(f"  window: bans created from {since} to before {until}")
    faulty_args = " ".join(f"--faulty {v}" for v in faulty_versions)
    lines.append(f"  reinstate it: reinstate run {INCIDENT_KEY} {faulty_args} "
                 f"--since {since} --until {until} [--dry-run] [--require-approval]")
    lines.append(f"  or in the Prefect UI's reinstate-incident form: Incident key "
                 f"{INCIDENT_KEY}; Faulty rule versions {', '.join(faulty_versions)}; "
                 f"Bans created from {since}; Bans created before {until}")
    return lines

# Kinds of account, with their share of the population and the outcome the incident
# above must give them (None: not a candidate of that incident).
KINDS: tuple[tuple[str, float, str | None], ...] = (
    ("bystander", 0.22, None),                      # never banned
    ("wrongful_spam", 0.36, "reinstated"),          # spam_burst@7, corrected version false
    ("wrongful_hash", 0.06, "reinstated"),          # image_hash@2, corrected version false
    ("wrongful_both", 0.04, "reinstated"),          # both faulty versions, both wrongful
    ("wrongful_old_ban", 0.03, "reinstated"),       # plus an old, reversed moderator ban
    ("confirmed", 0.06, "upheld"),                  # corrected version true
    ("confirmed_and_moderator", 0.01, "upheld"),    # upheld comes before kept_other_ban
    ("uncertain_absent", 0.02, "needs_review"),     # a signal the corrected rule needs is absent
    ("uncertain_null", 0.01, "needs_review"),       # ... or null, or the whole evidence NULL
    ("uncertain_mistyped", 0.01, "needs_review"),   # ... or of the wrong type
    ("moderator_too", 0.03, "kept_other_ban"),      # wrongful, but a moderator banned it too
    ("other_rule_too", 0.02, "kept_other_ban"),     # wrongful, but harassment@4 banned it too
    ("unnamed_faulty_too", 0.01, "kept_other_ban"),  # wrongful, plus link_farm@1 (not named)
    ("outside_window_too", 0.01, "kept_other_ban"),  # wrongful, plus a @7 ban after the window
    ("outside_window_only", 0.01, None),            # only a @7 ban after the window
    ("deleted", 0.01, "skipped"),                   # standing faulty ban, account deleted
    ("deactivated", 0.01, "skipped"),               # standing faulty ban, closed by its owner
    ("appealed", 0.03, None),                       # faulty ban already reversed on appeal
    ("moderator_only", 0.02, None),                 # banned by a moderator alone
    ("harassment_only", 0.03, None),                # banned by an active, correct rule
)
# The mixed shape: a share of bystanders was banned inside the window by link_farm@1,
# which the mixed incident names and which has no corrected version.
MIXED_KINDS: tuple[tuple[str, float, str | None], ...] = tuple(
    (kind, weight - 0.05 if kind == "bystander" else weight, outcome)
    for kind, weight, outcome in KINDS
) + (("link_farm_in_window", 0.05, "needs_review"),)
# Signals no rule reads, padding the mixed shape's evidence as a real rules engine's does.
PADDING_SIGNALS = tuple(f"signal_{n:02d}" for n in range(20))

HOSTILE_DISPLAY_NAMES = (
    "Eve\r\nBcc: everyone@example.com",
    "<script>alert('pwned')</script>",
    '<b>Bold</b> & "quoted" \'single\'',
    "Zoë 🌸 Ωμέγα",
    "=?utf-8?q?Subject:_You_won?=",
    "Name\nSubject: You have been selected",
    "日本語の名前",
    "\u202eevil override",
    "Robert'); DROP TABLE accounts;--",
    "   ",
)
FIRST_NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farah", "Gustavo", "Hana", "Ines",
               "Jonas", "Kenji", "Léa", "Mateo", "Nadia", "Olu", "Priya", "Quinn", "Rosa",
               "Sven", "Tomás", "Uma", "Vik", "Wen", "Yusuf", "Zoë")
USERNAME_STEMS = tuple(
    unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    for name in FIRST_NAMES
)
CRAFTS = ("bakes", "knits", "paints", "plants", "hikes", "builds", "sews", "cooks",
          "frames", "pots", "draws", "sails")
LOCALES = (("en", 40), ("en-GB", 5), ("es", 12), ("fr", 9), ("de", 8), ("pt-BR", 8),
           ("pt", 3), ("ja", 8), ("ko", 3), ("sw", 2), ("es-MX", 2))
PIN_TITLES = ("Sourdough at dawn", "Mid-century chair restore", "Balcony tomatoes",
              "Watercolour skies", "Fair Isle yoke", "Trail to the lake", "Tiny house loft",
              "Ceramic glaze tests", "Weeknight ramen", "Quilt in blues", None)
MODERATORS = ("mod_alex", "mod_bea", "mod_chen", "mod_dara")


@dataclass(frozen=True)
class SeedOptions:
    accounts: int = 2000
    seed: int = 20250401
    pins_per_account: float = 5.0
    batch_rows: int = 50_000
    shape: str = "standard"  # or "mixed": see the module's docstring
    # Leave the platform's tables without statistics, as a fresh restore or bulk load does
    # before autovacuum's first ANALYZE (the benchmark's `--no-statistics`).
    analyze: bool = True

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {self.shape!r}")
        if not 1 <= self.accounts <= 50_000_000:
            raise ValueError(f"accounts must be between 1 and 50,000,000, not {self.accounts}")
        if not 0 <= self.pins_per_account <= 100:
            raise ValueError(f"pins per account must be between 0 and 100, not "
                             f"{self.pins_per_account}")


@dataclass
class SeedSummary:
    accounts: int = 0
    enforcement_actions: int = 0
    pins: int = 0
    rule_versions: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    expected_outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class PlatformNotEmptyError(ValueError):
    """The seed only writes into an empty platform, so it can never mix with real rows."""


@dataclass
class _Rows:
    """Rows of one account, in an order that satisfies every foreign key."""

    account: tuple[Any, ...]
    actions: list[tuple[Any, ...]]
    pins: list[tuple[Any, ...]]


class _Generator:
    def __init__(self, options: SeedOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.next_action_id = 1
        self.next_pin_id = 1
        self.mixed = options.shape == "mixed"
        kinds = MIXED_KINDS if self.mixed else KINDS
        self.kind_names = [k for k, _, _ in kinds]
        self.kind_weights = [w for _, w, _ in kinds]
        self.locale_names = [name for name, _ in LOCALES]
        self.locale_weights = [w for _, w in LOCALES]

    # -- small draws ---------------------------------------------------------------
    def _moment(self, start: datetime, days: float) -> datetime:
        return start + timedelta(seconds=int(self.rng.random() * days * 86400))

    def _action_id(self) -> int:
        action_id = self.next_action_id
        self.next_action_id += 1
        return action_id

    def _display_name(self, account_id: int) -> str | None:
        roll = self.rng.random()
        if roll < 0.03:
            return HOSTILE_DISPLAY_NAMES[account_id % len(HOSTILE_DISPLAY_NAMES)]
        if roll < 0.08:
            return None
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(CRAFTS)}"

    def _email(self, username: str, account_id: int) -> str | None:
        roll = self.rng.random()
        if roll < 0.05:
            return None
        if roll < 0.07:
            return f"o'{username}+pins@example.test"
        return f"{username}@example.test"

    # -- evidence ------------------------------------------------------------------
    def _spam_evidence(self, verdict: str) -> dict[str, Any] | None:
        rng = self.rng
        if verdict == "wrongful":
            # The corrected rule needs all three; one at least fails here.
            miss = rng.randrange(3)
            return {
                "links_per_hour": rng.randint(5, 39) if miss == 0 else rng.randint(5, 90),
                "repeat_text_ratio": round(rng.uniform(0.31, 0.8), 3) if miss == 1
                else round(rng.uniform(0.0, 1.0), 3),
                "verified_email": True if miss == 2 else rng.random() < 0.5,
                "account_age_days": rng.randint(1, 4000),
            }
        if verdict == "confirmed":
            return {
                "links_per_hour": rng.randint(40, 400),
                "repeat_text_ratio": round(rng.uniform(0.81, 1.0), 3),
                "verified_email": False,
                "account_age_days": rng.randint(0, 30),
            }
        if verdict == "absent":
            return {"links_per_hour": rng.randint(40, 200), "repeat_text_ratio": 0.95}
        if verdict == "null":
            if rng.random() < 0.4:
                return None
            return {"links_per_hour": rng.randint(40, 200), "repeat_text_ratio": 0.9,
                    "verified_email": None}
        # mistyped: a number that arrived as a string, or a boolean spelt out
        if rng.random() < 0.5:
            return {"links_per_hour": str(rng.randint(40, 200)), "repeat_text_ratio": 0.9,
                    "verified_email": False}
        return {"links_per_hour": 120, "repeat_text_ratio": 0.9, "verified_email": "no"}

    def _hash_evidence(self) -> dict[str, Any]:
        return {"hash_distance": self.rng.randint(3, 12),
                "hash_list": self.rng.choice(["counterfeit_catalog", "stock_photos", "memes"])}

    # -- actions -------------------------------------------------------------------
    def _ban(self, account_id: int, source: str, rule: str | None, created_at: datetime,
             evidence: dict[str, Any] | None, *, reversed_by: int | None = None,
             reversed_at: datetime | None = None) -> tuple[Any, ...]:
        if source == "rule":
            assert rule is not None
            actor, reason = "rules-engine", f"Automated enforcement: {rule}"
            rule_version_id: int | None = RULE_ID[rule]
            if self.mixed and evidence is not None:
                evidence = {**evidence, **self._padding()}
        else:
            actor = self.rng.choice(MODERATORS)
            reason = "Manual review: repeated policy violations"
            rule_version_id, evidence = None, None
        return (self._action_id(), account_id, "ban", source, rule_version_id, actor, reason,
                evidence, created_at, reversed_at, reversed_by)

    def _padding(self) -> dict[str, Any]:
        rng = self.rng
        values: list[Any] = [rng.randint(0, 10_000), round(rng.random(), 4),
                             rng.random() < 0.5, rng.choice(CRAFTS), None]
        return {name: values[i % len(values)] for i, name in enumerate(PADDING_SIGNALS)}

    def _reversed_history(self, account_id: int, before: datetime) -> list[tuple[Any, ...]]:
        """Older bans of the account that moderators reversed (the mixed shape): none,
        one, two or three, by a moderator, a correct rule or an earlier rule version."""
        rows: list[tuple[Any, ...]] = []
        for _ in range(self.rng.choices((0, 1, 2, 3), (0.25, 0.35, 0.25, 0.15))[0]):
            at = self._moment(datetime(2023, 1, 1, tzinfo=UTC), 700)
            if at >= before - timedelta(days=3):
                at = before - timedelta(days=60)
            unban = self._unban(account_id, at + timedelta(days=2), "Appeal granted")
            source = self.rng.choice(("moderator", "harassment@4", "spam_burst@6"))
            if source == "moderator":
                ban = self._ban(account_id, "moderator", None, at, None,
                                reversed_by=unban[0], reversed_at=unban[8])
            elif source == "harassment@4":
                ban = self._ban(account_id, "rule", source, at,
                                {"reports_24h": self.rng.randint(10, 40),
                                 "reporter_overlap": 0.3},
                                reversed_by=unban[0], reversed_at=unban[8])
            else:
                ban = self._ban(account_id, "rule", source, at,
                                {"links_per_hour": self.rng.randint(100, 300)},
                                reversed_by=unban[0], reversed_at=unban[8])
            rows += [unban, ban]
        return rows

    def _unban(self, account_id: int, at: datetime, reason: str) -> tuple[Any, ...]:
        return (self._action_id(), account_id, "unban", "moderator", None,
                self.rng.choice(MODERATORS), reason, None, at, None, None)

    def _pins(self, account_id: int, count: int, hiding_bans: Sequence[int],
              created: datetime, hidden_at: datetime | None) -> list[tuple[Any, ...]]:
        rows = []
        rng = self.rng
        for _ in range(count):
            roll = rng.random()
            title = PIN_TITLES[rng.randrange(len(PIN_TITLES))]
            if roll < 0.06:
                status, hidden_by, at = "deleted", None, created
            elif roll < 0.11:
                status, hidden_by, at = "hidden", None, created      # hidden by its owner
            elif hiding_bans and hidden_at is not None:
                status, hidden_by, at = "hidden", rng.choice(hiding_bans), hidden_at
            else:
                status, hidden_by, at = "visible", None, created
            rows.append((self.next_pin_id, account_id, title, status, hidden_by, at))
            self.next_pin_id += 1
        return rows

    # -- one account ---------------------------------------------------------------
    def account(self, account_id: int) -> tuple[str, _Rows]:
        rng = self.rng
        kind = rng.choices(self.kind_names, self.kind_weights)[0]
        username = f"{rng.choice(USERNAME_STEMS)}_{rng.choice(CRAFTS)}_{account_id}"
        locale = rng.choices(self.locale_names, self.locale_weights)[0]
        created = self._moment(datetime(2019, 1, 1, tzinfo=UTC), 1900)
        pin_count = int(rng.random() * (2 * self.options.pins_per_account + 1))
        in_window = self._moment(INCIDENT_SINCE, 14)
        actions: list[tuple[Any, ...]] = []
        hiding: list[int] = []
        status = "banned"
        updated = in_window

        def faulty_spam(verdict: str = "wrongful") -> tuple[Any, ...]:
            return self._ban(account_id, "rule", "spam_burst@7", in_window,
                             self._spam_evidence(verdict))

        if kind == "bystander":
            status, updated = "active", created
        elif kind in ("wrongful_spam", "deleted", "deactivated"):
            ban = faulty_spam()
            actions.append(ban)
            hiding.append(ban[0])
            if kind != "wrongful_spam":
                status = kind
                updated = in_window + timedelta(days=3)
        elif kind == "wrongful_hash":
            ban = self._ban(account_id, "rule", "image_hash@2", in_window, self._hash_evidence())
            actions.append(ban)
            hiding.append(ban[0])
        elif kind == "wrongful_both":
            first = faulty_spam()
            # Both inside the incident's window, in either order.
            second = self._ban(account_id, "rule", "image_hash@2",
                               self._moment(INCIDENT_SINCE, 14), self._hash_evidence())
            actions += [first, second]
            hiding += [first[0], second[0]]
            updated = max(first[8], second[8])
        elif kind == "wrongful_old_ban":
            old_at = self._moment(datetime(2023, 1, 1, tzinfo=UTC), 300)
            unban = self._unban(account_id, old_at + timedelta(days=2), "Appeal granted")
            old = self._ban(account_id, "moderator", None, old_at, None,
                            reversed_by=unban[0], reversed_at=unban[8])
            ban = faulty_spam()
            actions += [unban, old, ban]
            hiding.append(ban[0])
            # A pin the old ban hid and nobody restored: the incident must leave it alone.
            pin_rows = self._pins(account_id, pin_count, hiding, created, in_window)
            pin_rows.append((self.next_pin_id, account_id, "Left hidden by a reversed ban",
                             "hidden", old[0], old_at))
            self.next_pin_id += 1
            return kind, self._finish(account_id, username, locale, status, updated, actions,
                                      pin_rows)
        elif kind in ("confirmed", "confirmed_and_moderator"):
            ban = faulty_spam("confirmed")
            actions.append(ban)
            hiding.append(ban[0])
            if kind == "confirmed_and_moderator":
                mod = self._ban(account_id, "moderator", None, in_window + timedelta(hours=2),
                                None)
                actions.append(mod)
        elif kind.startswith("uncertain_"):
            ban = faulty_spam(kind.removeprefix("uncertain_"))
            actions.append(ban)
            hiding.append(ban[0])
        elif kind in ("moderator_too", "other_rule_too", "unnamed_faulty_too",
                      "outside_window_too"):
            ban = faulty_spam()
            if kind == "moderator_too":
                other = self._ban(account_id, "moderator", None, in_window + timedelta(hours=9),
                                  None)
            elif kind == "other_rule_too":
                other = self._ban(account_id, "rule", "harassment@4", in_window - timedelta(
                    days=20), {"reports_24h": rng.randint(10, 60), "reporter_overlap": 0.2})
            elif kind == "unnamed_faulty_too":
                other = self._ban(account_id, "rule", "link_farm@1", in_window - timedelta(
                    days=30), {"outbound_domains": rng.randint(0, 2)})
            else:
                other = self._ban(account_id, "rule", "spam_burst@7",
                                  self._moment(INCIDENT_UNTIL, 3), self._spam_evidence("wrongful"))
            actions += [ban, other]
            hiding += [ban[0], other[0]]
        elif kind == "outside_window_only":
            ban = self._ban(account_id, "rule", "spam_burst@7", self._moment(INCIDENT_UNTIL, 3),
                            self._spam_evidence("wrongful"))
            actions.append(ban)
            hiding.append(ban[0])
            updated = ban[8]
        elif kind == "appealed":
            reversed_at = in_window + timedelta(days=2)
            unban = self._unban(account_id, reversed_at, "Appeal granted: not spam")
            ban = self._ban(account_id, "rule", "spam_burst@7", in_window,
                            self._spam_evidence("wrongful"), reversed_by=unban[0],
                            reversed_at=reversed_at)
            actions += [unban, ban]
            status, updated = "active", reversed_at
            # The moderator who granted the appeal restored the pins by hand.
            return kind, self._finish(account_id, username, locale, status, updated, actions,
                                      self._pins(account_id, pin_count, [], created, None))
        elif kind == "moderator_only":
            ban = self._ban(account_id, "moderator", None, in_window, None)
            actions.append(ban)
            hiding.append(ban[0])
        elif kind == "link_farm_in_window":
            ban = self._ban(account_id, "rule", "link_farm@1", in_window,
                            {"outbound_domains": rng.randint(0, 2)})
            actions.append(ban)
            hiding.append(ban[0])
        elif kind == "harassment_only":
            ban = self._ban(account_id, "rule", "harassment@4", in_window - timedelta(days=40),
                            {"reports_24h": rng.randint(10, 80), "reporter_overlap": 0.1})
            actions.append(ban)
            hiding.append(ban[0])
            updated = ban[8]
        else:  # pragma: no cover - KINDS and this chain are kept in step by the tests
            raise AssertionError(kind)
        hidden_at = max((a[8] for a in actions), default=None) if hiding else None
        return kind, self._finish(
            account_id, username, locale, status, updated, actions,
            self._pins(account_id, pin_count, hiding, created, hidden_at),
        )

    def _finish(self, account_id: int, username: str, locale: str, status: str,
                updated: datetime, actions: list[tuple[Any, ...]],
                pin_rows: list[tuple[Any, ...]]) -> _Rows:
        if self.mixed and actions:
            actions = self._reversed_history(account_id, min(a[8] for a in actions)) + actions
        account = (account_id, username, self._display_name(account_id),
                   self._email(username, account_id), locale, status, updated)
        return _Rows(account, actions, pin_rows)


EXPECTED_OUTCOME: dict[str, str | None] = {kind: outcome for kind, _, outcome in KINDS}
MIXED_EXPECTED_OUTCOME: dict[str, str | None] = {
    kind: outcome for kind, _, outcome in MIXED_KINDS}


def expected_outcome(kind: str, shape: str = "standard") -> str | None:
    """The outcome the seeded incident of a shape must give an account of this kind."""
    return (MIXED_EXPECTED_OUTCOME if shape == "mixed" else EXPECTED_OUTCOME)[kind]


def rule_version_rows() -> list[dict[str, Any]]:
    return [
        {"id": rid, "rule_name": name, "version": version, "status": status,
         "deployed_at": deployed_at, "condition": condition}
        for rid, name, version, status, deployed_at, condition in RULE_VERSIONS
    ]


def generate(options: SeedOptions) -> Iterator[tuple[str, _Rows]]:
    """Yield (kind, rows) for each account, in id order."""
    generator = _Generator(options)
    for account_id in range(1, options.accounts + 1):
        yield generator.account(account_id)


# -- writing ----------------------------------------------------------------------------

ACCOUNT_COLUMNS = ("id", "username", "display_name", "email", "locale", "status", "updated_at")
ACTION_COLUMNS = ("id", "account_id", "kind", "source", "rule_version_id", "actor", "reason",
                  "evidence", "created_at", "reversed_at", "reversed_by_action_id")
PIN_COLUMNS = ("id", "account_id", "title", "status", "hidden_by_action_id", "updated_at")

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")).translate(_COPY_ESCAPES)
    return str(value)


def _copy_line(row: Iterable[Any]) -> str:
    return "\t".join(map(_copy_field, row)) + "\n"


def _assert_platform_empty(conn: Connection) -> None:
    for table in (accounts, enforcement_actions, pins, rule_versions):
        if conn.execute(select(func.count()).select_from(table)).scalar_one():
            raise PlatformNotEmptyError(
                f"the platform table {table.name!r} already holds rows: the seed writes only "
                "into an empty platform database (create a new one, then `reinstate db "
                "create-platform`)"
            )


class _PostgresCopyWriter:
    """Streams rows to three COPY statements at once through three connections' buffers.

    COPY needs one statement per table at a time on a connection; rather than holding
    all rows in memory, the writer keeps text buffers per table and flushes each when it
    grows, COPYing into that table with the foreign keys already satisfied by earlier
    flushes (accounts before actions before pins).
    """

    def __init__(self, conn: Connection, batch_rows: int) -> None:
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.batch_rows = batch_rows
        self.buffers: dict[str, list[str]] = {"accounts": [], "enforcement_actions": [],
                                              "pins": []}
        self.columns = {"accounts": ACCOUNT_COLUMNS, "enforcement_actions": ACTION_COLUMNS,
                        "pins": PIN_COLUMNS}

    def add(self, rows: _Rows) -> None:
        self.buffers["accounts"].append(_copy_line(rows.account))
        self.buffers["enforcement_actions"].extend(map(_copy_line, rows.actions))
        self.buffers["pins"].extend(map(_copy_line, rows.pins))
        if len(self.buffers["pins"]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        for table in ("accounts", "enforcement_actions", "pins"):
            lines = self.buffers[table]
            if not lines:
                continue
            columns = ", ".join(self.columns[table])
            with self.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                copy.write("".join(lines))
            lines.clear()


class _InsertWriter:
    """Batched INSERTs, for SQLite (and any database without COPY)."""

    def __init__(self, conn: Connection, batch_rows: int) -> None:
        self.conn = conn
        self.batch_rows = batch_rows
        self.accounts: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.pins: list[dict[str, Any]] = []

    def add(self, rows: _Rows) -> None:
        self.accounts.append(dict(zip(ACCOUNT_COLUMNS, rows.account, strict=True)))
        self.actions.extend(dict(zip(ACTION_COLUMNS, a, strict=True)) for a in rows.actions)
        self.pins.extend(dict(zip(PIN_COLUMNS, p, strict=True)) for p in rows.pins)
        if len(self.pins) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        for table, batch in ((accounts, self.accounts), (enforcement_actions, self.actions),
                             (pins, self.pins)):
            if batch:
                self.conn.execute(insert(table), batch)
                batch.clear()


def seed(engine: Engine, options: SeedOptions,
         progress: Callable[[int], None] | None = None) -> SeedSummary:
    """Write one synthetic incident into an empty platform database, in one transaction."""
    summary = SeedSummary()
    started = time.perf_counter()
    with engine.begin() as conn:
        _assert_platform_empty(conn)
        conn.execute(insert(rule_versions), rule_version_rows())
        summary.rule_versions = len(RULE_VERSIONS)
        writer: _PostgresCopyWriter | _InsertWriter
        if conn.dialect.name == "postgresql":
            writer = _PostgresCopyWriter(conn, options.batch_rows)
        else:
            writer = _InsertWriter(conn, max(1000, options.batch_rows // 10))
        for kind, rows in generate(options):
            writer.add(rows)
            summary.accounts += 1
            summary.enforcement_actions += len(rows.actions)
            summary.pins += len(rows.pins)
            summary.kinds[kind] += 1
            expected = expected_outcome(kind, options.shape)
            if expected is not None:
                summary.expected_outcomes[expected] += 1
            if progress is not None and summary.accounts % 10_000 == 0:
                progress(10_000)
        writer.flush()
        if conn.dialect.name == "postgresql":
            # Ids were given explicitly; move each identity past them so the platform's
            # next row (the pipeline's unban actions, say) gets a fresh id.
            for table in ("accounts", "rule_versions", "enforcement_actions", "pins"):
                conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                ))
    if engine.dialect.name == "postgresql" and options.analyze:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE accounts, enforcement_actions, pins, rule_versions"))
            conn.commit()
    if progress is not None:
        progress(summary.accounts % 10_000)
    summary.seconds = time.perf_counter() - started
    return summary
