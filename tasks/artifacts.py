"""Where an incident's cards live in Prefect: their keys, and publishing a card that a run
shows once."""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact

MAX_KEY_LENGTH = 100  # Prefect's limit on an artifact key


def artifact_key(incident_key: str, what: str) -> str:
    """The artifact key of one incident's `what`: distinct for distinct incident keys.

    Artifact keys allow lowercase letters, digits and dashes only, so `INC-1`, `inc-1` and
    `INC.1` would all read `inc-1`: a digest of the exact key keeps them apart.
    """
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-"
                      for c in incident_key.lower()).strip("-")
    digest = hashlib.sha256(incident_key.encode()).hexdigest()[:10]
    room = MAX_KEY_LENGTH - len(what) - len(digest) - 2
    return f"{what}-{cleaned[:min(60, room)]}-{digest}"


def publish_once_per_run(key: str, description: str, *, markdown: str | None = None,
                          table: list[dict[str, Any]] | None = None) -> UUID | None:
    """Publish a markdown (or table) card under `key` that this flow run shows once: when
    the key's newest version is this run's, that card is brought up to date in place;
    otherwise a new version is made. Either way the key's newest version is what was
    published last. Returns the card's artifact id.

    A deployment run resumed after the operator's decision runs again from the top: it
    reaches the preview again, publishes it once more when the decision is taken (it then
    names the decision), and publishes the report when it suspends and again at its end;
    each time a new version, its Artifacts tab would show the same key twice.
    """
    from prefect.artifacts import TableArtifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    data = markdown if table is None else TableArtifact(table=table).format()
    if run_id is not None and isinstance(data, str):
        with get_client(sync_client=True) as client:
            newest = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[key])), limit=1)
            if newest and str(newest[0].flow_run_id) == str(run_id):
                client.update_artifact(newest[0].latest_id, ArtifactUpdate(
                    data=data, description=description))
                return newest[0].latest_id
    if table is None:
        created = create_markdown_artifact(key=key, markdown=markdown or "",
                                           description=description)
    else:
        created = create_table_artifact(key=key, table=table, description=description)
    return created if isinstance(created, UUID) else None  # (awaitable from async code)
