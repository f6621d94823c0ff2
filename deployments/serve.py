"""Register every deployment against PREFECT_API_URL and serve their runs from this process.

`reinstate serve` runs this; so does `python -m deployments.serve`. It is Prefect's
`serve`, with one difference: on SIGTERM or Ctrl-C the process is gone within
`STOP_SECONDS` even when the Prefect server no longer answers (Prefect's own shutdown
would keep retrying it). The graceful stop gets those seconds first: it cancels the runs
in flight, which every step resumes idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from reinstatement.errors import BadInput

STOP_SECONDS = 8.0
# How often the process asks the server for runs to start. Prefect's default is 10 s, so a
# run an operator starts in the UI waited up to 10 s to begin; PREFECT_RUNNER_POLL_FREQUENCY
# still overrides it.
POLL_SECONDS = 2.0
# How often `serve` checks that `reinstate deploy` has not moved its deployments to a work
# pool, and looks for runs waiting for a decision that an operator cancelled.
POOL_CHECK_SECONDS = 5.0
WAITS_CHECK_SECONDS = 10.0
logger = logging.getLogger("reinstatement.serve")
_deadline_started = threading.Event()


def _stop_within(seconds: float) -> None:
    """Let the graceful shutdown run, and end the process after `seconds` at most."""
    if _deadline_started.is_set():
        return
    _deadline_started.set()

    def end() -> None:
        time.sleep(seconds)
        logger.warning("the shutdown did not finish within %.0f s (is the Prefect server "
                       "gone?): stopping now", seconds)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=end, name="serve-stop-deadline", daemon=True).start()


def _runner(**kwargs: Any) -> Any:
    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args: object, **kwargs: object) -> None:
            _stop_within(STOP_SECONDS)
            super().handle_sigterm(*args, **kwargs)

    return _Runner(**kwargs)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _stop_within(STOP_SECONDS)
    signal.default_int_handler(signum, frame)


def stop_on_ctrl_c() -> None:
    """From now on Ctrl-C ends the process within STOP_SECONDS, wherever it lands.

    Called before Prefect is imported: a Ctrl-C during that import (seconds on a busy
    machine) otherwise went nowhere when the process had started with it ignored (as a
    shell's background job does), so it served on, or raised KeyboardInterrupt into the
    import and the way out took longer than the promised 10 s under load. Nothing here
    imports Prefect.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def _ensure_limits() -> Any:
    """The global limits the runs take slots of, created with their defaults where the
    server has none (existing ones are kept as an operator set them): no run then warns
    that a limit is missing. First, the alert block REINSTATE_ALERT_BLOCK names is checked
    (BadInput, before anything is made, when the server has no such block); returned."""
    from prefect.client.orchestration import get_client

    from deployments.alerts import alert_block
    from tasks.limits import LimitSettings, ensure_limits

    with get_client(sync_client=True) as client:
        block = alert_block(client)
        ensure_limits(client, LimitSettings())
    return block


def _install_alerts(block: Any, nightly_deployment_id: Any) -> str:
    """The operators' alerts (deployments/alerts.py), in one line for the console."""
    from prefect.client.orchestration import get_client

    from deployments.alerts import install_alerts

    with get_client(sync_client=True) as client:
        return install_alerts(client, block, nightly_deployment_id).describe()


class OnAPool(BadInput):
    """The deployments are registered on a work pool: its workers run them, not `serve`."""


def _placed(paths: list[str]) -> dict[str, tuple[str | None, Any]]:
    """For each named deployment ("flow/deployment"): the work pool it is registered on
    (None: served) and when it was last registered."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    placed = {}
    with get_client(sync_client=True) as client:
        for path in paths:
            try:
                deployment = client.read_deployment_by_name(path)
            except ObjectNotFound:
                continue
            placed[path] = (deployment.work_pool_name, deployment.updated)
    return placed


def _pools_of(paths: list[str]) -> set[str]:
    """The work pools the named deployments are registered on."""
    return {pool for pool, _ in _placed(paths).values() if pool}


def _refuse_if_on_a_pool(paths: list[str]) -> None:
    pools = _pools_of(paths)
    if pools:
        raise OnAPool(
            f"the deployments are on the work pool {', '.join(sorted(pools))} (`reinstate "
            "deploy`): its workers run them, with their settings; start `prefect worker "
            "start --pool NAME`, or `reinstate serve --take-over` to serve them from this "
            "process instead")


def _stop_when_moved_to_a_pool(paths: list[str]) -> None:
    """Watch, every POOL_CHECK_SECONDS, that no `reinstate deploy` moved the deployments to
    a work pool meanwhile; if one did, stop serving (the pool's workers run them now, with
    the settings they were started with)."""
    served = _placed(paths)  # as this process registered them (on a pool: --take-over)

    def watch() -> None:
        while True:
            time.sleep(POOL_CHECK_SECONDS)
            try:
                now = _placed(paths)
            except Exception as exc:  # noqa: BLE001 - the server may be restarting
                logger.debug("could not read the deployments: %s", exc)
                continue
            pools = {pool for path, (pool, updated) in now.items()
                     if pool and served.get(path, (None, None))[1] != updated}
            if pools:
                logger.error("the deployments were registered on the work pool %s (`reinstate "
                             "deploy`): this `reinstate serve` stops, and the pool's "
                             "workers run them", ", ".join(sorted(pools)))
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="serve-pool-watch", daemon=True).start()


def _record_ended_waits() -> None:
    """Every WAITS_CHECK_SECONDS, the runs suspended for a decision that an operator
    cancelled in the UI are recorded, and their incidents' reports published again
    (tasks/waits.py): Prefect runs no code of ours for such a cancel."""
    from tasks.waits import record_ended_waits

    def watch() -> None:
        while True:
            time.sleep(WAITS_CHECK_SECONDS)
            try:
                record_ended_waits()
            except Exception as exc:  # noqa: BLE001 - the next look tries again
                logger.warning("could not check the runs waiting for a decision: %s", exc)

    threading.Thread(target=watch, name="serve-waits-watch", daemon=True).start()


def main(limit: int | None = None, take_over: bool = False) -> None:
    """Block, executing the deployments' runs as the Prefect server schedules them.

    Refuses (OnAPool) when `reinstate deploy` registered them on a work pool, unless
    `take_over`; stops when that happens while it serves."""
    stop_on_ctrl_c()  # SIGTERM ends the process by default until the runner takes it over
    from deployments.definitions import (
        RECONCILIATION_DEPLOYMENT,
        all_deployments,
        as_the_operator_left_them,
    )

    polling = None if os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY") else POLL_SECONDS
    # Stopping `serve` leaves the schedules as they are (Prefect's runner pauses them by
    # default, and the nightly would stay off after a restart): an operator pauses them.
    runner = _runner(limit=limit, query_seconds=polling, pause_on_shutdown=False)
    deployments = as_the_operator_left_them(all_deployments())
    paths = [f"{d.flow_name}/{d.name}" for d in deployments]
    if not take_over:
        _refuse_if_on_a_pool(paths)
    block = _ensure_limits()
    nightly = None
    for deployment in deployments:
        deployment_id = runner.add_deployment(deployment)
        if deployment.name == RECONCILIATION_DEPLOYMENT:
            nightly = deployment_id
    alerts = _install_alerts(block, nightly)
    _stop_when_moved_to_a_pool(paths)
    _record_ended_waits()
    print(f"serving {len(deployments)} deployments: "  # noqa: T201 - the operator's console
          f"{', '.join(d.name for d in deployments)}; Ctrl-C or SIGTERM stops it\n{alerts}",
          flush=True)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        logger.info("stopped by Ctrl-C")


if __name__ == "__main__":
    main()
