"""`reinstate deploy`: the deployments on a work pool, and the global limits they share.

    reinstate deploy [--pool reinstatement] [--image IMAGE] [--database-batches N]
        [--smtp-connections N] [--mail-rate PER_SECOND]

Against the Prefect server at PREFECT_API_URL it:

1. creates the work pool as a **process** pool when it does not exist (a Docker or
   Kubernetes pool is created beforehand with `prefect work-pool create --type docker|
   kubernetes NAME`, and then needs `--image`, the image flow runs start from);
2. checks the notification block REINSTATE_ALERT_BLOCK names, when it is set
   (deployments/alerts.py): a block that is missing is refused before anything is made;
3. creates the global concurrency limits where missing, with the defaults of
   tasks/limits.py, and sets the values given on the command line (a value not given
   keeps what the server has, so a limit tuned in the UI survives a redeploy);
4. registers the six deployments on the pool (Prefect's `RunnerDeployment.apply`, what
   `flow.deploy` does without building an image), with module-path entrypoints: a worker
   runs them wherever this package is installed;
5. creates or updates the operators' alerts (three automations) with that block.

Then any number of `prefect worker start --pool NAME` processes, on machines that reach
the Prefect server and the database, execute the runs. Bad input (a pool name Prefect
would refuse, `--image` for a process pool, none for a Docker one, no PREFECT_API_URL)
or an alert block the server does not have) is refused before anything is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from deployments.alerts import AlertsDone, alert_block, install_alerts
from reinstatement.errors import BadInput
from tasks.limits import Limit, LimitSettings, ensure_limits

DEFAULT_POOL = "reinstatement"
# Prefect refuses these in names (prefect.types.BANNED_CHARACTERS), and a name is
# also a path segment of the API.
_BAD_NAME = re.compile(r"[/%&><]")


class PrefectUnavailable(RuntimeError):
    """The Prefect server could not be reached or refused the registration."""


@dataclass
class Registration:
    pool: str
    pool_type: str
    pool_created: bool
    deployments: list[str] = field(default_factory=list)
    limits: dict[str, Limit] = field(default_factory=dict)
    alerts: AlertsDone = field(default_factory=lambda: AlertsDone(None))


def _api_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise BadInput("PREFECT_API_URL is not set: `reinstate deploy` registers on a Prefect "
                       "server that the workers reach, e.g. "
                       "PREFECT_API_URL=http://prefect.example:4200/api")
    return str(url)


def check_pool_name(pool: str) -> str:
    name = pool.strip()
    if not name or _BAD_NAME.search(name) or len(name) > 200:
        raise BadInput(f"--pool: {pool!r} is not a work pool name (1 to 200 characters, "
                       "none of / % & > <)")
    return name


def register_on_pool(pool: str = DEFAULT_POOL, *, image: str | None = None,
                     limits: LimitSettings | None = None) -> Registration:
    """Create the pool (process) and the limits where missing, and register every
    deployment on the pool; see the module's docstring."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from deployments.definitions import (
        RECONCILIATION_DEPLOYMENT,
        all_deployments,
        as_the_operator_left_them,
    )

    name = check_pool_name(pool)
    image = image.strip() if image is not None else None
    if image == "":
        raise BadInput("--image: give the image flow runs start from, e.g. "
                       "registry.example/reinstatement:1.0")
    url = _api_url()
    try:
        with get_client(sync_client=True) as client:
            try:
                existing: Any = client.read_work_pool(name)
            except ObjectNotFound:
                existing = None
            pool_type = existing.type if existing is not None else "process"
            if pool_type == "process" and image:
                raise BadInput(f"--image: work pool {name!r} is a process pool, which runs "
                               "flows in the worker's own environment; an image is for a "
                               "Docker or Kubernetes pool (create one with `prefect "
                               "work-pool create --type docker NAME`)")
            if pool_type != "process" and not image:
                raise BadInput(f"--image: work pool {name!r} is a {pool_type} pool: name the "
                               "image its flow runs start from (see the Dockerfile)")
            block = alert_block(client)
            if existing is None:
                client.create_work_pool(WorkPoolCreate(
                    name=name, type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="The reinstatement pipeline's runs, on process workers."))
            registration = Registration(name, pool_type, existing is None)
            registration.limits = ensure_limits(client, limits or LimitSettings())
        nightly = None
        for deployment in as_the_operator_left_them(all_deployments(EntrypointType.MODULE_PATH)):
            deployment_id = deployment.apply(work_pool_name=name, image=image)
            if deployment.name == RECONCILIATION_DEPLOYMENT:
                nightly = deployment_id
            registration.deployments.append(f"{deployment.flow_name}/{deployment.name}")
        with get_client(sync_client=True) as client:
            registration.alerts = install_alerts(client, block, nightly)
    except httpx.HTTPError as exc:
        raise PrefectUnavailable(f"the Prefect server at {url} did not take the "
                                 f"registration: {exc}") from None
    return registration
