"""The errors the pipeline tells its users about.

`BadInput` is anything the operator can fix by asking differently: the CLI prints it and
exits with status 2, and it is always raised before a single row has changed.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Input the pipeline refuses; the message names what is wrong."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message never carries its password."""
