"""The file backend: an outbox folder with one .eml file per notice, for local runs and tests."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import re
import tempfile
from pathlib import Path

from reinstatement.notices.backends.base import (
    EmailBackend,
    TransientDeliveryError,
    Upcoming,
    logger,
    mask_email,
    recipient_or_permanent,
)

_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


class FileBackend(EmailBackend):
    """An outbox folder with one .eml file per notice, named after its Message-ID.

    Each file is written to a temporary name and renamed into place, so a crash leaves
    either the whole message or nothing; sending the same Message-ID again replaces the
    same file, so a resumed run never makes a second copy.

    Durability: a killed process loses nothing written (the kernel holds it). Against a
    power loss, `sync="batch"` (the default) makes every file of a batch durable when the
    batch ends (`close()`, one `syncfs`), `sync="each"` fsyncs each file and the folder
    before its notice is recorded (two fsyncs a notice, which bound one sender's rate;
    see bench/RESULTS.md), and `sync="none"` leaves it to the kernel.
    """

    name = "file"

    def __init__(self, directory: Path, *, sync: str = "batch") -> None:
        if sync not in ("batch", "each", "none"):
            raise ValueError(f"sync must be batch, each or none, not {sync!r}")
        self.directory = Path(directory)
        self.sync = sync
        self._ready = False
        self._unsynced = False

    def __repr__(self) -> str:
        return f"FileBackend(directory={str(self.directory)!r})"

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ready = True

    def close(self) -> None:
        if self._unsynced:
            self._unsynced = False
            _sync_filesystem(self.directory)

    def path_for(self, message_id: str) -> Path:
        """The file a message id is written to."""
        stem = message_id.strip().removeprefix("<").removesuffix(">")
        if not stem:
            raise ValueError("message id is empty")
        safe = _FILE_NAME_UNSAFE.sub("_", stem).lstrip(".")
        if safe != stem or len(safe) > 150:
            # Two different ids must never share a file, so a changed or shortened name
            # carries a hash of the original.
            digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
            safe = f"{safe[:100]}-{digest[:16]}"
        return self.directory / f"{safe}.eml"

    def send(self, recipient: str, message_id: str, message: bytes,
             upcoming: Upcoming | None = None) -> None:
        recipient_or_permanent(recipient)
        target = self.path_for(message_id)
        each = self.sync == "each"
        try:
            if not self._ready:
                self.open()
            descriptor, temporary = self._temporary_file()
            try:
                try:
                    view = memoryview(message)
                    while view:
                        view = view[os.write(descriptor, view):]
                    if each:
                        os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            if each:
                self._fsync_directory()
            elif self.sync == "batch":
                self._unsynced = True
        except OSError as exc:
            raise TransientDeliveryError(None, f"cannot write {target.name}: {exc}") from exc
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("wrote notice %s for %s", target.name, mask_email(recipient))

    def _temporary_file(self) -> tuple[int, str]:
        """A new file of this process's own in the folder, open for writing (mode 0600).

        Named after the process and a counter and written through the bare descriptor:
        cheaper than `tempfile.mkstemp`'s random name and a buffered file, on a path taken
        once a notice. A name already taken (a file left by an earlier process with the
        same id) falls back to mkstemp.
        """
        name = os.path.join(self.directory, f".tmp-{os.getpid()}-{next(_TEMPORARY_NUMBERS)}.part")
        try:
            return os.open(name, _NEW_FILE_FLAGS, 0o600), name
        except FileExistsError:
            return tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.directory)

    def _fsync_directory(self) -> None:
        # The rename itself is only durable once the directory entry is on disk.
        if os.name != "posix":
            return
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


_TEMPORARY_NUMBERS = itertools.count()
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(
    os, "O_BINARY", 0)


def _sync_filesystem(directory: Path) -> None:
    """Flush the filesystem holding `directory` to disk: syncfs(2) where the C library has
    it (Linux), else sync(2)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)
