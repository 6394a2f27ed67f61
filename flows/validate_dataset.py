"""Flow: validate a stored snapshot again, e.g. after someone edited the dataset's suite."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import get_settings
from tasks.steps import load_stored_manifest, validate_batch
from tasks.store import ArtifactStore


@flow(name="validate-dataset", log_prints=True)
def validate_dataset(dataset: str, sha256: str, suite: str | None = None) -> dict[str, Any]:
    """Run a dataset's expectation suite (or another named suite) on one of its snapshots."""
    settings = get_settings()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)

    # Load the snapshot's manifest
    manifest = load_stored_manifest(store, dataset, sha256)

    # Validate (a failing snapshot is quarantined and the flow fails with the reason)
    report = validate_batch(store, manifest, suite_name=suite)

    create_markdown_artifact(
        key="validation-summary",
        markdown=f"## Validation of `{dataset}` `{sha256[:12]}`\n\n{report.summary()}",
    )
    return report.to_dict()
