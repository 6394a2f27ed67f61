"""Flow: ingest a source into a versioned snapshot and validate it."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import get_settings
from tasks.steps import load_source, validate_batch
from tasks.store import ArtifactStore


@flow(name="ingest-dataset", log_prints=True)
def ingest_dataset(
    source: str,
    dataset: str,
    query: str | None = None,
    delimiter: str = ",",
    label_column: str | None = None,
) -> dict[str, Any]:
    """Snapshot a CSV, Parquet, SQL or s3:// source and validate it against its suite."""
    settings = get_settings()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)

    # Ingest
    manifest = load_source(source, dataset, store, query, delimiter, settings.chunk_rows)

    # Validate (the first accepted snapshot of a dataset creates its suite)
    optional = [label_column] if label_column else []
    report = validate_batch(store, manifest, optional_columns=optional)

    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"## Ingested `{dataset}`\n\n| | |\n|---|---|\n| source | `{manifest.source}` |\n"
            f"| rows | {manifest.rows} |\n| columns | {len(manifest.columns)} |\n"
            f"| sha256 | `{manifest.sha256}` |\n| validation | {report.summary()} |\n"
        ),
    )
    return {
        "dataset": dataset,
        "sha256": manifest.sha256,
        "rows": manifest.rows,
        "columns": manifest.columns,
        "snapshot": manifest.snapshot_uri,
        "validation": report.to_dict(),
    }
