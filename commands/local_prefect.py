"""Local runs of the flows without a Prefect server: a stable home and a patient start-up.

Without `PREFECT_API_URL`, Prefect starts a temporary server for each flow run. That server
migrates the database in Prefect's home folder and is given 20 s to answer; on a busy
2-core machine a fresh migration plus the server's imports often take longer, and the
engineer's first run dies with a timeout. So, before Prefect is imported, the `reinstate`
command:

- keeps Prefect's home in `./.prefect` (beside the default `./reinstatement.db` and
  `./outbox/`) unless `PREFECT_HOME` is set, so its database is migrated once, on the first
  run, and later runs only open it; the user's own Prefect profiles still apply;
- gives the temporary server `STARTUP_TIMEOUT_SECONDS` to answer unless
  `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` is set;

and, if the server still does not answer, the command ends with exit status 1 and the one
line of `SERVER_DID_NOT_START` instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

LOCAL_HOME = Path(".prefect")
STARTUP_TIMEOUT_SECONDS = 240
# The text Prefect's temporary server raises when it does not answer in time.
PREFECT_STARTUP_FAILURE = "Timed out while attempting to connect to ephemeral Prefect API server"
SERVER_DID_NOT_START = (
    "Prefect's temporary server did not start in time (the machine may be busy): start one "
    "with `prefect server start` in another shell and set "
    "PREFECT_API_URL=http://127.0.0.1:4200/api, then run the command again"
)


def prepare_local_prefect(environ: MutableMapping[str, str] | None = None) -> None:
    """Settle Prefect's home and start-up limit for this process; call before importing it."""
    env = os.environ if environ is None else environ
    if env.get("PREFECT_API_URL"):
        return  # a real server: nothing local to prepare
    if not env.get("PREFECT_HOME"):
        # The user's profiles live in the default home; keep reading them from there.
        default_profiles = Path.home() / ".prefect" / "profiles.toml"
        if not env.get("PREFECT_PROFILES_PATH") and default_profiles.exists():
            env["PREFECT_PROFILES_PATH"] = str(default_profiles)
        env["PREFECT_HOME"] = str(LOCAL_HOME.resolve())
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                   str(STARTUP_TIMEOUT_SECONDS))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def is_startup_failure(exc: BaseException) -> bool:
    """Whether `exc` is Prefect's temporary server failing to answer at start-up."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(PREFECT_STARTUP_FAILURE)
