"""Flow: score a new batch with a registered model into the results database."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import get_settings
from tasks.steps import (
    check_batch_schema,
    load_model_scorer,
    load_source,
    record_batch_snapshot,
    resolve_model,
    score_into_results,
    validate_batch,
)
from tasks.store import ArtifactStore


def load_batch(source: str, model: str, query: str | None = None, delimiter: str = ",") -> Any:
    """Read, check and snapshot a batch of a model as score_batch does (the manifest)."""
    settings = get_settings()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    return load_source(source, f"{model}-batches", store, query, delimiter, settings.chunk_rows)


@flow(name="score-batch", log_prints=True)
def score_batch(
    source: str,
    model: str,
    alias: str | None = None,
    version: int | None = None,
    batch_id: str | None = None,
    query: str | None = None,
    delimiter: str = ",",
) -> dict[str, Any]:
    """Score a batch with models:/MODEL@ALIAS (champion by default) or a version; idempotent."""
    from registry.versions import check_model_ref
    from tasks.results import check_batch_id

    # Checks of the arguments, before anything is read or written
    name, ref_alias = check_model_ref(model, alias, version)
    check_batch_id(batch_id)
    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    resolved = resolve_model(settings.mlflow_tracking_uri, name, ref_alias, version)

    # Ingest: the batch is snapshotted like any data; its hash is the default batch id
    manifest = load_source(source, f"{name}-batches", store, query, delimiter, settings.chunk_rows)

    # Validate: the model's signature first, then the suite of the data it was trained on
    scorer = load_model_scorer(settings.mlflow_tracking_uri, resolved)
    columns = check_batch_schema(manifest, resolved, scorer)
    label = resolved.tags.get("label_column") or None
    report = validate_batch(
        store,
        manifest,
        # A version logged by hand has no dataset tag: the model's name is the default dataset.
        suite_name=resolved.tags.get("dataset") or name,
        optional_columns=[label] if label else [],
    )

    # Score: delete + insert of the batch in one transaction
    batch = batch_id or manifest.sha256[:16]
    result = score_into_results(
        store, manifest, resolved, scorer, columns, settings.results_url, batch, settings.chunk_rows
    )
    # Feedback on these rows is joined back to their features through the batch's snapshot
    record_batch_snapshot(settings.results_url, manifest, result)
    create_markdown_artifact(
        key="score-summary",
        markdown=(
            f"## Scored batch `{batch}`\n\nmodel `{name}` v{resolved.version} "
            f"({resolved.alias or 'by version'}): {result['rows_scored']} rows, "
            f"{result['anomalies']} anomalies. Validation: {report.summary()}"
        ),
    )
    share = result["anomalies"] / result["rows_scored"] if result["rows_scored"] else 0.0
    return {
        **result,
        "metrics": {"anomaly_share": share},
        "source": manifest.source,
        "validation": report.summary(),
    }
