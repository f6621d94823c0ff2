"""Measure how many notices per second `NoticeRenderer.render_bytes` produces on one core.

At a million notices rendering, not the network, is the cost, so this is the number to
watch when templates or the MIME assembly change. Run: python -m bench.render_bench
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta

from reinstatement.notices.render import (
    SUPPORTED_LOCALES,
    NoticeContext,
    NoticeRenderer,
    message_id_for,
)

SENDER = "Trust & Safety <trust-and-safety@example.com>"
# The tags accounts carry, not just the six languages: regional tags and unsupported
# languages exercise the fallback and Babel's locale lookups too.
LOCALE_TAGS = (*SUPPORTED_LOCALES, "en-GB", "pt-BR", "es-MX", "fr-CA", "ko", "zz-Latn-XX")
DISPLAY_NAMES = (None, "Zoë 🌸", "山田 太郎", '<b>x</b> & "q"', "Eve\r\nBcc: x@example.com")


def sample_contexts(count: int) -> list[NoticeContext]:
    """A varied batch: every language, names with and without trouble, 0 to many pins."""
    first_ban = datetime(2025, 4, 1, 6, tzinfo=UTC)
    contexts = []
    for index in range(count):
        account_id = 1_000_000 + index
        contexts.append(
            NoticeContext(
                incident_key="INC-2025-04-spam",
                case_id=index + 1,
                account_id=account_id,
                username=f"user_{account_id}",
                display_name=DISPLAY_NAMES[index % len(DISPLAY_NAMES)],
                recipient=f"user{account_id}@example.com",
                locale=LOCALE_TAGS[index % len(LOCALE_TAGS)],
                rule_names=("spam_burst",) if index % 3 else ("spam_burst", "image_hash"),
                ban_date=first_ban + timedelta(hours=index % 500),
                pins_restored=index % 40,
                message_id=message_id_for("INC-2025-04-spam", account_id, "example.com"),
                sender=SENDER,
            )
        )
    return contexts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="notices per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    args = parser.parse_args(argv)

    renderer = NoticeRenderer()
    contexts = sample_contexts(args.count)
    now = datetime.now(UTC)
    for ctx in contexts[:200]:  # warm Babel's and Jinja's caches, as a long run would be
        renderer.render_bytes(ctx, now=now)

    best = 0.0
    total_bytes = 0
    for _ in range(args.rounds):
        started = time.perf_counter()
        total_bytes = sum(len(renderer.render_bytes(ctx, now=now)) for ctx in contexts)
        elapsed = time.perf_counter() - started
        best = max(best, args.count / elapsed)
    sys.stdout.write(
        f"render_bytes: {best:,.0f} notices/s on one core "
        f"({args.count:,} notices per round, best of {args.rounds}; "
        f"{total_bytes / args.count:,.0f} bytes per notice)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
