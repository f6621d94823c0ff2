"""One account's platform rows (the account, its enforcement actions, its pins), drawn
for its kind of account.

Accounts, bans and pins are drawn from `random.Random(seed)`, so the same seed and size
write the same rows, on either database. Display names and emails include hostile ones
(header injection, markup, right-to-left overrides) that every later step must carry
safely.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reinstatement.seed.incident import INCIDENT_SINCE, INCIDENT_UNTIL, RULE_ID
from reinstatement.seed.shapes import KINDS, MIXED_KINDS, SHAPES

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
    shape: str = "standard"  # or "mixed": see reinstatement/seed/shapes.py
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
class AccountRows:
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
    def account(self, account_id: int) -> tuple[str, AccountRows]:
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
                pin_rows: list[tuple[Any, ...]]) -> AccountRows:
        if self.mixed and actions:
            actions = self._reversed_history(account_id, min(a[8] for a in actions)) + actions
        account = (account_id, username, self._display_name(account_id),
                   self._email(username, account_id), locale, status, updated)
        return AccountRows(account, actions, pin_rows)


def generate(options: SeedOptions) -> Iterator[tuple[str, AccountRows]]:
    """Yield (kind, rows) for each account, in id order."""
    generator = _Generator(options)
    for account_id in range(1, options.accounts + 1):
        yield generator.account(account_id)
