"""Local runs without a Prefect server: a stable home, a patient start-up, one clear line.

The ten-runs-under-load figure in the README comes from `make check-local-runs`; these
tests pin the rules it rests on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from commands.local_prefect import (
    LOCAL_HOME,
    SERVER_DID_NOT_START,
    STARTUP_TIMEOUT_SECONDS,
    prepare_local_prefect,
)
from reinstatement.seed import INCIDENT_FAULTY, INCIDENT_KEY, INCIDENT_SINCE, INCIDENT_UNTIL

REINSTATE = [sys.executable, "-m", "commands.reinstate"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_without_a_server_the_home_is_project_local_and_the_start_up_patient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    prepare_local_prefect(env)
    assert env["PREFECT_HOME"] == str(tmp_path / LOCAL_HOME)
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == str(
        STARTUP_TIMEOUT_SECONDS)


def test_what_the_user_set_is_kept(tmp_path: Path) -> None:
    with_server = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    prepare_local_prefect(with_server)
    assert with_server == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    own = {"PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    prepare_local_prefect(own)
    assert own["PREFECT_HOME"] == str(tmp_path)
    assert own["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "90"


def test_a_temporary_server_that_does_not_start_ends_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "REINSTATE_"))}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    for words in (["db", "create-platform"], ["db", "upgrade"], ["seed", "--accounts", "50"]):
        subprocess.run([*REINSTATE, *words], cwd=tmp_path, env=env, check=True,
                       capture_output=True)
    # A limit no server meets stands in for a machine too busy to start one in time.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "1"
    command = [*REINSTATE, "run", INCIDENT_KEY, "--dry-run",
               "--since", INCIDENT_SINCE.isoformat(), "--until", INCIDENT_UNTIL.isoformat()]
    for version in INCIDENT_FAULTY:
        command += ["--faulty", version]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {SERVER_DID_NOT_START}"], done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / LOCAL_HOME).is_dir()  # Prefect's home, beside the database
