"""The version's summary as a Markdown artifact of the current Prefect flow run.

Shared by the synthesis flow (which publishes on finalization) and the deployments (which look
artifacts up by key), so neither module needs the other.
"""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_markdown_artifact

from dataflux.report import summary_markdown


def artifact_key(version_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "dataflux-" + re.sub(r"[^a-z0-9-]+", "-", version_id.lower()).strip("-")


def publish_version_artifact(catalog, version_id: str) -> Any:
    """Publish version `version_id`'s summary as a Markdown artifact of the current flow run.
    Returns the artifact id."""
    return create_markdown_artifact(markdown=summary_markdown(catalog, version_id), key=artifact_key(version_id),
                                    description=f"DataFlux version {version_id}")
