"""The seeded incident: its story, the platform's rule versions, and its declaration.

The story: `spam_burst@7` went out on 2025-04-01 with a condition far too broad and
banned tens of thousands of ordinary accounts until `spam_burst@8` replaced it on
2025-04-15; `image_hash@2` matched near-duplicate images too loosely in the same two
weeks. The incident an operator declares for it:

    reinstate run INC-2025-04-spam --faulty spam_burst@7 --faulty image_hash@2 \\
        --since 2025-04-01T00:00:00Z --until 2025-04-15T00:00:00Z

The mixed shape's incident (`reinstatement/seed/shapes.py`) also names `link_farm@1`,
which has no corrected version, so its cases go to review.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

INCIDENT_KEY = "INC-2025-04-spam"
INCIDENT_FAULTY = ("spam_burst@7", "image_hash@2")
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


def rule_version_rows() -> list[dict[str, Any]]:
    return [
        {"id": rid, "rule_name": name, "version": version, "status": status,
         "deployed_at": deployed_at, "condition": condition}
        for rid, name, version, status, deployed_at, condition in RULE_VERSIONS
    ]
