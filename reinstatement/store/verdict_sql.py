"""Every claimed case's outcome and reasons computed in the database (PostgreSQL).

`verdicts.decide` is the reference: this module states the same rules as one SELECT over
the claimed cases, their accounts and their standing bans, with each faulty ban's corrected
condition compiled to SQL (`condition_sql`). Its rows carry what `decide` returns (the
outcome, the sorted ban ids and the reasons as JSON, the summary in the same words), so the
verify step writes a batch's cases and audit rows with one UPDATE ... FROM and one
INSERT ... SELECT, and nothing per case passes through Python.

What it cannot say, it hands back: a case with a faulty ban whose corrected condition is
unknown on its evidence (a signal absent, null, of the wrong type; evidence no JSON function
reads safely) needs the reasons to name the signals and their problems, which only the
Python evaluator (`conditions.explain`) tells. Such a row has `python` true and the caller
decides it in Python, as before. In the seeded incident that is about one case in twenty.

`tests/test_verdict_sql.py` checks, case by case, that this query and `decide` agree on the
outcome, the ban ids and every field of the reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    distinct,
    func,
    null,
    or_,
    select,
    type_coerce,
)
from sqlalchemy import case as sql_case
from sqlalchemy.dialects import postgresql

from reinstatement.platform_schema import accounts, enforcement_actions, rule_versions
from reinstatement.store.condition_sql import compile_condition, object_evidence, parsed_evidence
from reinstatement.verdicts import (
    MODERATOR_BAN,
    NOT_A_RULE_BAN,
    OUTSIDE_WINDOW,
    VERSION_NOT_NAMED,
    BanVerdict,
    IncidentRules,
    Outcome,
)


class ArrayText(str):
    """An array already in PostgreSQL's text form (`array_literal`'s, or an array read back
    as text): `array` sends it as it is."""


def array(item_type: Any, values: Iterable[Any]) -> Any:
    """One PostgreSQL array parameter, sent as the text of an array literal and cast.

    psycopg dumps a list element by element in Python (a regular expression for each, to
    decide on quoting): 2.4 CPU seconds of the flow process at 100k accounts, on the two
    cores PostgreSQL needs. The literal is made here with one join: integers as they are,
    text quoted (backslash and double quote escaped), booleans as t and f, None as NULL.
    """
    literal = values if isinstance(values, ArrayText) else array_literal(item_type, values)
    return cast(bindparam(None, str(literal), type_=Text), postgresql.ARRAY(item_type))


def array_literal(item_type: Any, values: Iterable[Any]) -> str:
    """PostgreSQL's text form of an array of `item_type` (integer, text or boolean)."""
    kind = item_type if isinstance(item_type, type) else type(item_type)
    if issubclass(kind, Integer):  # BigInteger and SmallInteger too
        values = list(values)
        if set(map(type, values)) <= {int}:  # the usual case, without a loop in Python
            return "{" + ",".join(map(str, values)) + "}"
        return "{" + ",".join(["NULL" if v is None else str(_integer(v)) for v in values]) + "}"
    if issubclass(kind, Boolean):
        return "{" + ",".join(["NULL" if v is None else "t" if v else "f" for v in values]) + "}"
    if issubclass(kind, String):  # Text too
        return "{" + ",".join(["NULL" if v is None else '"' + str(v).replace(
            "\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"
    raise TypeError(f"array_literal: no text form for arrays of {kind.__name__}")


def _integer(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"array_literal: {value!r} is not an integer")
    return int(value)


def listed_text(value: Any, *order_by: Any) -> Any:
    """`value` of the rows aggregated into an array in `order_by`'s order, as its text: an
    `ArrayText` for the next statement, which Python passes on without reading."""
    return cast(func.array_agg(postgresql.aggregate_order_by(value, *order_by)), Text)


def array_param(name: str, item_type: Any) -> Any:
    """A named array parameter (its value: `array_literal`'s text), for a statement built
    once and executed for each batch."""
    return cast(bindparam(name, type_=Text), postgresql.ARRAY(item_type))


def array_rows(**columns: tuple[Any, Sequence[Any]]) -> Any:
    """Rows from parallel arrays, PostgreSQL's unnest(a, b, ...) AS t(name_a, name_b, ...).

    Each keyword is a column: (element type, values). Used to write a batch's per-row
    values in ONE statement (UPDATE ... FROM rows) where an executemany would send a
    statement per row: in the scale benchmark those executemanys were most of the time
    verify and restore spent beyond the raw-SQL floor.
    """
    arrays = [array(element, values) for element, values in columns.values()]
    return func.unnest(*arrays).table_valued(*columns).render_derived()


def judged_bans(dialect: str, query: Any, rules: IncidentRules | None, *,
                ordered: bool = True) -> Any:
    """`query`'s bans with `truth`: the corrected condition of the ban's faulty version on
    its evidence (NULL: unknown, not a faulty version's ban, or no rules given), and the
    evidence text only where the truth is NULL.

    Each stage is a subquery behind OFFSET 0, which PostgreSQL does not flatten, so the
    evidence is parsed once per row however often the condition refers to it.
    """
    whens = [] if rules is None else [
        (version_id, version.corrected_condition)
        for version_id, version in sorted(rules.faulty.items())
        if version.corrected_condition is not None
    ]
    if not whens:
        bans = query.subquery()
        # Typed, so that PostgreSQL reads `truth IS TRUE` of it (an untyped NULL is text).
        judged = select(*bans.c, cast(null(), Boolean).label("truth"))
        return judged.order_by(bans.c.account_id, bans.c.id) if ordered else judged
    parsed = query.add_columns(
        parsed_evidence(query.selected_columns.evidence_text, dialect).label("parsed")
    ).offset(0).subquery()
    staged = select(*[c for c in parsed.c if c.name != "parsed"],
                    object_evidence(parsed.c.parsed, dialect).label("doc")
                    ).offset(0).subquery()
    truth = sql_case(*[(staged.c.rule_version_id == bindparam(None, version_id,
                                                              type_=BigInteger),
                        compile_condition(condition, staged.c.doc, dialect,
                                          staged.c.evidence_text))
                       for version_id, condition in whens], else_=null())
    stage = select(*[c for c in staged.c if c.name not in ("doc", "evidence_text")],
                   truth.label("truth"), staged.c.evidence_text).offset(0).subquery()
    judged = select(*[c for c in stage.c if c.name != "evidence_text"],
                    sql_case((stage.c.truth.is_(None), stage.c.evidence_text),
                             else_=null()).label("evidence_text"))
    return judged.order_by(stage.c.account_id, stage.c.id) if ordered else judged


def standing_bans_query(accounts_named: Any) -> Any:
    """The standing bans of the accounts `accounts_named` says (a condition on
    `enforcement_actions.account_id`), with the evidence as its JSON text and the ban's
    rule version's name parts.

    The evidence as text, decoded row by row where Python needs it: the driver's decoder
    would fail the whole batch on one poisoned value, and read decimals as floats."""
    ea, rv = enforcement_actions, rule_versions
    return (
        select(ea.c.id, ea.c.account_id, ea.c.source, ea.c.rule_version_id,
               ea.c.created_at, cast(ea.c.evidence, Text).label("evidence_text"),
               rv.c.rule_name, rv.c.version)
        .select_from(ea.outerjoin(rv, rv.c.id == ea.c.rule_version_id))
        .where(accounts_named, ea.c.kind == "ban", ea.c.reversed_at.is_(None))
    )


def _text(value: str) -> ColumnElement[str]:
    return bindparam(None, value, type_=Text)


def _iso_utc(moment: Any) -> ColumnElement[str]:
    """The timestamp as Python's `datetime.isoformat()` writes an aware UTC one."""
    utc = func.timezone("UTC", moment)
    return (func.to_char(utc, _text('YYYY-MM-DD"T"HH24:MI:SS'))
            + sql_case((func.extract("microseconds", utc) % 1_000_000 != 0,
                        func.to_char(utc, _text(".US"))), else_=_text(""))
            + _text("+00:00"))


def _joined(items: Any) -> ColumnElement[str]:
    """A text array's items as "a", "a and b" or "a, b and c" (verdicts._join)."""
    count = func.cardinality(items)
    return sql_case(
        (count > 1, func.array_to_string(func.trim_array(items, 1), _text(", "))
         + _text(" and ") + type_coerce(items, postgresql.ARRAY(Text))[count]),
        else_=func.coalesce(type_coerce(items, postgresql.ARRAY(Text))[1], _text("")))


def _json_list(items: Any, where: Any) -> ColumnElement[Any]:
    """The group's `items` as a JSON array in the order they come (`verdicts`' items come
    in ban id order), where `where` holds; [] when none."""
    return func.coalesce(func.json_agg(items).filter(where), cast(_text("[]"), JSON))


def keep_ban_order(conn: Connection, **settings: str) -> None:
    """Run `verdicts` in this transaction as it relies on: in one process.

    Its aggregates take each case's bans in the order its sorted subquery hands them over.
    PostgreSQL's documentation describes that way of feeding an aggregate ordered input,
    and its limit: it holds while nothing between the subquery and the aggregate reorders
    the rows. The grouping reads the subquery directly; but one aggregate split over
    parallel workers and combined could mix the order, so parallel plans are off until the
    transaction ends. `settings` are further settings for it (name: value).
    """
    values = {"max_parallel_workers_per_gather": "0", **settings}
    conn.execute(select(*[func.set_config(name, value, True) for name, value in values.items()]))


# The batch's named parameters in `verdicts`: the claimed cases as parallel arrays, and
# their accounts once each.
_BATCH_COLUMNS = {"case_id": ("batch_case_ids", BigInteger),
                  "account_id": ("batch_account_ids", BigInteger),
                  "round": ("batch_rounds", Integer),
                  "prior_state": ("batch_prior_states", Text)}


def batch_parameters(case_ids: Sequence[int], account_ids: Sequence[int],
                     rounds: Sequence[int], prior_states: Sequence[str]) -> dict[str, Any]:
    """The values of `verdicts`' named parameters for one batch of claimed cases."""
    values = {"case_id": case_ids, "account_id": account_ids, "round": rounds,
              "prior_state": prior_states}
    parameters: dict[str, Any] = {name: array_literal(item_type, values[column])
                                  for column, (name, item_type) in _BATCH_COLUMNS.items()}
    batch_accounts = sorted(set(account_ids))
    parameters["batch_accounts"] = array_literal(BigInteger, batch_accounts)
    parameters["batch_first_account"] = batch_accounts[0] if batch_accounts else 0
    parameters["batch_last_account"] = batch_accounts[-1] if batch_accounts else -1
    return parameters


def verdicts(rules: IncidentRules) -> Any:
    """One row per case: case_id, account_id, round, prior_state, outcome, summary, reasons
    (json), faulty_ban_ids and standing_ban_ids (json), standing_ids (array), faulty_names
    (text, the distinct faulty versions sorted and joined with ", "), python (the reasons
    need the Python evaluator), email and locale.

    The batch comes as named parameters (`batch_parameters`), so that the statement, the
    same for every batch of an incident, is built and compiled once (about 50 ms of the
    flow's CPU a batch). Rounds: from the second round on the window has no end
    (steps.rules_for_round). Run it in a transaction where `keep_ban_order` was called.
    """
    claimed = func.unnest(*[array_param(name, item_type)
                            for name, item_type in _BATCH_COLUMNS.values()]
                          ).table_valued(*_BATCH_COLUMNS).render_derived()
    faulty = sorted(rules.faulty.items())
    versions = array_rows(
        version_id=(BigInteger, [version_id for version_id, _ in faulty]),
        faulty_name=(Text, [v.faulty_name for _, v in faulty]),
        corrected_name=(Text, [v.corrected_name for _, v in faulty]),
        has_condition=(Boolean, [v.corrected_condition is not None for _, v in faulty]),
    )
    bans = judged_bans("postgresql", standing_bans_query(
        enforcement_actions.c.account_id == any_(array_param("batch_accounts", BigInteger))),
        rules, ordered=False).subquery("bans")

    # Why a ban is not a faulty ban (verdicts.classify_ban), NULL when it is one.
    outside = [bans.c.created_at < bindparam(None, rules.since)] if rules.since else []
    if rules.until is not None:
        outside.append(and_(claimed.c.round <= 1,
                            bans.c.created_at >= bindparam(None, rules.until)))
    why = sql_case(
        (bans.c.source == _text("moderator"), _text(MODERATOR_BAN)),
        (bans.c.source.is_distinct_from(_text("rule")), _text(NOT_A_RULE_BAN)),
        (versions.c.version_id.is_(None), _text(VERSION_NOT_NAMED)),
        *([(or_(*outside), _text(OUTSIDE_WINDOW))] if outside else []),
        else_=null(),
    )
    verdict = sql_case(
        (versions.c.has_condition.is_(False), _text(BanVerdict.UNCERTAIN)),
        (bans.c.truth.is_(True), _text(BanVerdict.CONFIRMED)),
        (bans.c.truth.is_(False), _text(BanVerdict.WRONGFUL)),
        else_=null(),  # unknown on the evidence: Python names the signals
    )
    classified = (
        select(claimed.c.case_id, bans.c.id, bans.c.source, bans.c.created_at,
               sql_case((bans.c.rule_name.is_(None), null()),
                        else_=bans.c.rule_name + _text("@") + cast(bans.c.version, Text)
                        ).label("rule_name"),
               versions.c.faulty_name, versions.c.corrected_name,
               why.label("why"), verdict.label("verdict"))
        .select_from(claimed.join(bans, bans.c.account_id == claimed.c.account_id)
                     .outerjoin(versions, versions.c.version_id == bans.c.rule_version_id))
        .subquery("classified")
    )
    c = classified.c
    is_faulty = c.why.is_(None)
    kind = sql_case((c.why.is_not(None), _text("other")), else_=func.coalesce(
        c.verdict, _text("unknown")))
    ban_words = _text("ban ") + cast(c.id, Text) + _text(" by ") + c.faulty_name
    describe = sql_case(
        (c.why.is_not(None), _text("ban ") + cast(c.id, Text) + _text(" (") + sql_case(
            (c.rule_name.is_not(None), _text("from ") + c.rule_name + _text(", ")),
            else_=_text("")) + c.why + _text(")")),
        (c.verdict == _text(BanVerdict.CONFIRMED),
         c.corrected_name + _text(" confirms ") + ban_words),
        (c.verdict == _text(BanVerdict.WRONGFUL),
         ban_words + _text(" is wrongful by ") + c.corrected_name),
        (c.verdict == _text(BanVerdict.UNCERTAIN), ban_words + _text(" has no corrected version")),
        else_=null(),
    )
    ban_json = sql_case(
        (is_faulty, func.json_build_object(
            _text("ban_id"), c.id, _text("faulty_version"), c.faulty_name,
            _text("corrected_version"), c.corrected_name, _text("verdict"), c.verdict,
            _text("unknown_signals"), cast(_text("[]"), JSON),
            _text("created_at"), _iso_utc(c.created_at))),
        else_=func.json_build_object(
            _text("ban_id"), c.id, _text("source"), c.source,
            _text("rule_version"), c.rule_name, _text("why_not_faulty"), c.why))
    items = select(c.case_id, c.id, c.why, c.faulty_name, kind.label("kind"),
                   describe.label("describe"), ban_json.label("ban_json")
                   ).order_by(c.case_id, c.id).subquery("items")
    n = items.c
    n_faulty = n.why.is_(None)

    def in_order(value: Any, where: Any) -> Any:
        """The group's `value`s in ban id order, where `where` holds (NULL: none)."""
        return func.array_agg(value).filter(where)

    # One row per case, from plain aggregates: the phrases' lists as arrays in ban id
    # order (joined "a, b and c" below), the faulty versions' names once each in code
    # point order, the bans as JSON. (Window functions numbering each ban within its
    # case cost four sorts of the batch's bans: most of the query's time.)
    # The id order is the items' own: sorted once by case and ban, and read in that
    # order by the grouping (`keep_ban_order` keeps it in one process). An ORDER BY in
    # each aggregate sorted every case's bans again for each of seven aggregates,
    # 35,000 small sorts a batch of 5,000: 37 of the query's 82 ms.
    per_case = select(
        n.case_id,
        func.count().filter(n_faulty).label("faulty_count"),
        func.count().filter(n.kind == _text("other")).label("other_count"),
        func.count().filter(n.kind == _text(BanVerdict.CONFIRMED)).label("confirmed_count"),
        func.count().filter(n.kind == _text(BanVerdict.UNCERTAIN)).label("uncertain_count"),
        func.count().filter(n.kind == _text("unknown")).label("unknown_count"),
        in_order(n.describe, n.kind == _text("other")).label("other_list"),
        in_order(n.describe, n.kind == _text(BanVerdict.CONFIRMED)).label("confirmed_list"),
        in_order(n.describe, n.kind == _text(BanVerdict.UNCERTAIN)).label("uncertain_list"),
        func.array_agg(postgresql.aggregate_order_by(
            distinct(n.faulty_name.collate("C")), n.faulty_name.collate("C"))
        ).filter(n_faulty).label("names"),
        _json_list(n.ban_json, n_faulty).label("faulty_json"),
        _json_list(n.ban_json, n.why.is_not(None)).label("other_json"),
        in_order(n.id, n_faulty).label("faulty_ids"),
        func.array_agg(n.id).label("standing_ids"),
    ).group_by(n.case_id).subquery("per_case")
    p = per_case.c

    status = accounts.c.status
    skip = sql_case(
        (status.is_(None), _text("account does not exist")),
        (status != _text("banned"), _text("status is '") + status + _text("'")),
        (func.coalesce(p.faulty_count, 0) == 0, _text("no standing faulty ban")),
        else_=null(),
    )
    outcome = sql_case(
        (skip.is_not(None), _text(Outcome.SKIPPED)),
        (p.confirmed_count > 0, _text(Outcome.UPHELD)),
        (p.other_count > 0, _text(Outcome.KEPT_OTHER_BAN)),
        (p.uncertain_count > 0, _text(Outcome.NEEDS_REVIEW)),
        else_=_text(Outcome.REINSTATED),
    )
    summary = sql_case(
        (skip.is_not(None), _text("skipped: ") + skip),
        (p.confirmed_count > 0, _text("upheld: ") + _joined(p.confirmed_list)),
        (p.other_count > 0, _text("kept banned by ") + _joined(p.other_list)),
        (p.uncertain_count > 0, _text("needs review: ") + _joined(p.uncertain_list)),
        else_=_text("every standing ban is a wrongful ban by ") + _joined(p.names),
    )
    decided = (
        select(claimed.c.case_id, claimed.c.account_id, claimed.c.round,
               claimed.c.prior_state, outcome.label("outcome"), summary.label("summary"),
               skip.label("skip"),
               func.coalesce(p.faulty_json, cast(_text("[]"), JSON)).label("faulty_json"),
               func.coalesce(p.other_json, cast(_text("[]"), JSON)).label("other_json"),
               func.coalesce(func.to_json(p.faulty_ids), cast(_text("[]"), JSON)
                             ).label("faulty_ban_ids"),
               func.coalesce(func.to_json(p.standing_ids), cast(_text("[]"), JSON)
                             ).label("standing_ban_ids"),
               func.coalesce(p.standing_ids, array(BigInteger, [])).label("standing_ids"),
               func.coalesce(func.array_to_string(p.names, _text(", ")), _text("")
                             ).label("faulty_names"),
               (func.coalesce(p.unknown_count, 0) > 0).label("python"),
               accounts.c.email, accounts.c.locale)
        .select_from(claimed.outerjoin(per_case, p.case_id == claimed.c.case_id)
                     .outerjoin(accounts, and_(
                         accounts.c.id == claimed.c.account_id,
                         # True of every account the batch names: it lets the account
                         # index be read from the batch's first account, where a merge
                         # join read it from the table's first account for each batch.
                         accounts.c.id.between(
                             bindparam("batch_first_account", type_=BigInteger),
                             bindparam("batch_last_account", type_=BigInteger)))))
        .subquery("decided")
    )
    d = decided.c
    fields = [_text("outcome"), d.outcome, _text("summary"), d.summary,
              _text("faulty_bans"), d.faulty_json, _text("other_bans"), d.other_json]
    reasons = sql_case((d.skip.is_(None), func.json_build_object(*fields)),
                       else_=func.json_build_object(*fields, _text("skip_reason"), d.skip))
    return select(d.case_id, d.account_id, d.round, d.prior_state, d.outcome, d.summary,
                  reasons.label("reasons"), d.faulty_ban_ids, d.standing_ban_ids,
                  d.standing_ids, d.faulty_names, d.python, d.email, d.locale)


def fetch(conn: Connection, rules: IncidentRules, cases: Sequence[Any], *,
          reasons: bool = True) -> list[Any]:
    """The verdict rows of these claimed cases (steps.ClaimedCase), in case id order;
    without the reasons and the JSON id lists when `reasons` is false."""
    keep_ban_order(conn)
    query = verdicts(rules).subquery()
    skipped = () if reasons else ("reasons", "faulty_ban_ids", "standing_ban_ids")
    return list(conn.execute(select(*[c for c in query.c if c.name not in skipped])
                             .order_by(query.c.case_id), batch_parameters(
                                 [c.id for c in cases], [c.account_id for c in cases],
                                 [c.round for c in cases], [c.state for c in cases])))

