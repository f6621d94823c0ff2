"""The two shapes of seeded incident: the kinds of account each seeds, in what shares,
and the outcome the incident must give each kind.

Around the wrongly banned accounts the seed puts every kind of account the contract
tells apart, so a run of the incident exercises every outcome. The "mixed" shape
(`SeedOptions(shape="mixed")`, `reinstate seed --shape mixed`) is the same story as a real
platform's incident holds it: the incident also names `link_farm@1`, which has no
corrected version (its cases go to review), some accounts were banned by it inside the
window, every rules-engine ban's evidence carries twenty more signals than the rules
read, and most banned accounts carry older bans that moderators reversed.
"""

from __future__ import annotations

SHAPES = ("standard", "mixed")

# Kinds of account, with their share of the population and the outcome the seeded
# incident (incident.py) must give them (None: not a candidate of that incident).
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

EXPECTED_OUTCOME: dict[str, str | None] = {kind: outcome for kind, _, outcome in KINDS}
MIXED_EXPECTED_OUTCOME: dict[str, str | None] = {
    kind: outcome for kind, _, outcome in MIXED_KINDS}


def expected_outcome(kind: str, shape: str = "standard") -> str | None:
    """The outcome the seeded incident of a shape must give an account of this kind."""
    return (MIXED_EXPECTED_OUTCOME if shape == "mixed" else EXPECTED_OUTCOME)[kind]
