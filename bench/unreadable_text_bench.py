"""How long PostgreSQL takes to tell whether long evidence text is unreadable.

Evidence text of 6,385 characters or more may hold a fraction too long for PostgreSQL's
numeric (conditions.UNREADABLE_FRACTION), which the verdict statement must find before it
casts the text to jsonb. This times, row by row, the check the pipeline compiles
(store/condition_sql.py's `_pg_unreadable`; these rows hold no backslash-u) against the
single regular expression of the exponent and the fraction that it replaced, on hostile
rows of up to 99 KB, each the median of several runs in one session (so each regular
expression is compiled once).

    .venv/bin/python -m bench.unreadable_text_bench [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sqlalchemy import column, select, text

from reinstatement.conditions import UNREADABLE_EXPONENT, UNREADABLE_FRACTION
from reinstatement.store.condition_sql import _pg_unreadable
from reinstatement.store.engine import make_engine

ROWS = {
    "a string of 99,000 letters": """'{"a": "' || repeat('x', 99000) || '"}'""",
    "an integer of 99,000 digits": """'{"a": ' || repeat('9', 99000) || '}'""",
    "one fraction of 6,400 digits (unreadable)": """'{"a": 1.' || repeat('1', 6400) || '}'""",
    "15 fractions of 6,384 digits (readable)":
        """(SELECT '{' || string_agg('"k' || g || '": 1.' || repeat('1', 6384), ', ') || '}'
            FROM generate_series(1, 15) g)""",
    "'0.' 49,000 times": "repeat('0.', 49000)",
    "a fraction of 99,000 digits (unreadable)": """'{"a": 0.' || repeat('9', 99000) || '}'""",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    engine = make_engine(args.url)
    x = column("x")
    checks = {
        "one regular expression (before)":
            x.regexp_match(f"{UNREADABLE_EXPONENT}|{UNREADABLE_FRACTION}"),
        "the pipeline's check": _pg_unreadable(x),
    }
    with engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE unreadable_rows (i int, x text)"))
        for i, sql in enumerate(ROWS.values()):
            conn.execute(text(f"INSERT INTO unreadable_rows VALUES ({i}, {sql})"))
        sys.stdout.write(f"{'row':45} " + " ".join(f"{name:>34}" for name in checks) + "\n")
        for i, name in enumerate(ROWS):
            cells = []
            for check in checks.values():
                statement = select(check.label("unreadable")).select_from(
                    text("unreadable_rows")).where(column("i") == i)
                times, found = [], None
                for _ in range(args.runs):
                    started = time.perf_counter()
                    found = conn.execute(statement).scalar_one()
                    times.append(time.perf_counter() - started)
                cells.append(f"{statistics.median(times) * 1000:8.1f} ms ({found})")
            sys.stdout.write(f"{name:45} " + " ".join(f"{cell:>34}" for cell in cells) + "\n")
    engine.dispose()


if __name__ == "__main__":
    main()
