"""The console backend: each notice written to stdout, for the demo and local runs."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from reinstatement.notices.backends.base import EmailBackend, Upcoming, recipient_or_permanent


class ConsoleBackend(EmailBackend):
    """Writes each notice to stdout (or the given stream), between separator lines."""

    name = "console"
    separator = "-" * 79

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        # Several worker threads may share one console; keep each message in one piece.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "ConsoleBackend()"

    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        recipient_or_permanent(recipient)
        # Looked up at send time so that a redirected sys.stdout (pytest's capsys) is used.
        stream = self._stream if self._stream is not None else sys.stdout
        text = message.decode("utf-8", "replace").replace("\r\n", "\n")
        if not text.endswith("\n"):
            text += "\n"
        with self._lock:
            stream.write(f"{self.separator}\n{text}{self.separator}\n")
            stream.flush()
