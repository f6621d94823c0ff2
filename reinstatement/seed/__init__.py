"""Synthetic incidents: a realistic mass-ban written into an empty platform database,
behind `reinstate seed`.

Where each part lives:

- `incident.py`: the story (which rule versions were faulty, when), the platform's rule
  versions, and the incident an operator declares for it;
- `shapes.py`: the "standard" and "mixed" shapes, the kinds of account each seeds, in
  what shares, and the outcome the incident must give each kind;
- `platform_rows.py`: `SeedOptions`, and one account's rows drawn for its kind, from
  `random.Random(seed)` so the same seed and size write the same rows;
- `writing.py`: `seed`, writing the rows into an empty platform in one transaction (COPY
  on PostgreSQL, batched INSERTs on SQLite).

The synthetic ban history that fault detection reads is `reinstatement/seed_history.py`.
"""

from __future__ import annotations

from reinstatement.seed.incident import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    INCIDENT_SINCE,
    INCIDENT_UNTIL,
    MIXED_FAULTY,
    RULE_ID,
    RULE_VERSIONS,
    SEED_NOW,
    incident_description,
    incident_faulty,
    rule_version_rows,
)
from reinstatement.seed.platform_rows import (
    CRAFTS,
    FIRST_NAMES,
    HOSTILE_DISPLAY_NAMES,
    LOCALES,
    MODERATORS,
    PADDING_SIGNALS,
    PIN_TITLES,
    USERNAME_STEMS,
    AccountRows,
    SeedOptions,
    generate,
)
from reinstatement.seed.shapes import (
    EXPECTED_OUTCOME,
    KINDS,
    MIXED_EXPECTED_OUTCOME,
    MIXED_KINDS,
    SHAPES,
    expected_outcome,
)
from reinstatement.seed.writing import (
    ACCOUNT_COLUMNS,
    ACTION_COLUMNS,
    PIN_COLUMNS,
    PlatformNotEmptyError,
    SeedSummary,
    seed,
)

__all__ = [
    "ACCOUNT_COLUMNS",
    "ACTION_COLUMNS",
    "CRAFTS",
    "EXPECTED_OUTCOME",
    "FIRST_NAMES",
    "HOSTILE_DISPLAY_NAMES",
    "INCIDENT_FAULTY",
    "INCIDENT_KEY",
    "INCIDENT_SINCE",
    "INCIDENT_UNTIL",
    "KINDS",
    "LOCALES",
    "MIXED_EXPECTED_OUTCOME",
    "MIXED_FAULTY",
    "MIXED_KINDS",
    "MODERATORS",
    "PADDING_SIGNALS",
    "PIN_COLUMNS",
    "PIN_TITLES",
    "RULE_ID",
    "RULE_VERSIONS",
    "SEED_NOW",
    "SHAPES",
    "USERNAME_STEMS",
    "AccountRows",
    "PlatformNotEmptyError",
    "SeedOptions",
    "SeedSummary",
    "expected_outcome",
    "generate",
    "incident_description",
    "incident_faulty",
    "rule_version_rows",
    "seed",
]
