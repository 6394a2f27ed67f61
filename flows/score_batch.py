"""Flow: score a new batch with a registered model into the results database."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import get_settings
from tasks.steps import (
    check_batch_schema,
    dask_task_runner,
    load_model_scorer,
    load_source,
    record_batch_snapshot,
    resolve_model,
    score_into_results,
    score_partition,
    validate_batch,
)
from tasks.store import ArtifactStore


def check_scaleout(dask: str | None, partition_rows: int) -> int:
    """Worker threads to plan for: of the scheduler at `dask` (which must answer), of a local
    cluster (one per core), or 1 without Dask."""
    import os

    from tasks.scaleout import check_dask, check_reachable, partitions

    partitions(0, partition_rows)  # refuses a partition size below 1
    if check_dask(dask) is None:
        return 1
    return (os.cpu_count() or 1) if dask == "local" else check_reachable(dask)


def absolute(uri: str) -> str:
    """An s3:// URI as it is, a local path made absolute (Dask workers may run elsewhere)."""
    from pathlib import Path

    return uri if uri.startswith("s3://") else str(Path(uri).resolve())


def load_batch(source: str, model: str, query: str | None = None, delimiter: str = ",") -> Any:
    """Read, check and snapshot a batch of a model as score_batch does (the manifest)."""
    settings = get_settings()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    return load_source(source, f"{model}-batches", store, query, delimiter, settings.chunk_rows)


@flow(name="score-partitions", log_prints=True)
def score_partitions(
    manifest: Any,
    resolved: Any,
    columns: list[str],
    batch: str,
    partition_rows: int,
    window: int,
) -> dict[str, Any]:
    """Score a batch's partitions in parallel on this flow's task runner (Dask) and write their
    scores into the results DB in one transaction, in row order, each partition as soon as it
    and those before it are done."""
    from tasks.results import store_scores
    from tasks.scaleout import in_order, partition_arguments, partitions

    settings = get_settings()
    by_worker: dict[str, int] = {}

    arguments = partition_arguments(
        manifest,
        resolved,
        columns,
        settings.s3_endpoint_url,
        settings.mlflow_tracking_uri,
        settings.chunk_rows,
    )

    def submit(part: tuple[int, int]) -> Any:
        return score_partition.submit(*arguments(part))

    def scored() -> Any:
        for frame, worker in in_order(submit, parts, window):
            by_worker[worker] = by_worker.get(worker, 0) + len(frame)
            yield frame

    parts = partitions(manifest.rows, partition_rows)
    result = store_scores(settings.results_url, batch, scored(), resolved)
    return {**result, "partitions": len(parts), "rows_by_worker": by_worker}


@flow(name="score-batch", log_prints=True)
def score_batch(
    source: str,
    model: str,
    alias: str | None = None,
    version: int | None = None,
    batch_id: str | None = None,
    query: str | None = None,
    delimiter: str = ",",
    dask: str | None = None,
    partition_rows: int = 500_000,
) -> dict[str, Any]:
    """Score a batch with models:/MODEL@ALIAS (champion by default) or a version; idempotent.

    `dask`: a scheduler address (tcp://HOST:PORT) or 'local' (a LocalCluster) scores the batch
    in partitions of `partition_rows` rows in parallel on Dask workers.
    """
    from registry.versions import check_model_ref
    from tasks.results import check_batch_id

    # Checks of the arguments, before anything is read or written
    name, ref_alias = check_model_ref(model, alias, version)
    check_batch_id(batch_id)
    threads = check_scaleout(dask, partition_rows)
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
    if dask is None:
        result = score_into_results(
            store,
            manifest,
            resolved,
            scorer,
            columns,
            settings.results_url,
            batch,
            settings.chunk_rows,
        )
    else:
        # Workers read the snapshot by its path (same machine) or from S3
        shared = replace(manifest, snapshot_uri=absolute(manifest.snapshot_uri))
        runner = dask_task_runner(dask, threads)
        result = score_partitions.with_options(task_runner=runner)(
            shared, resolved, columns, batch, partition_rows, window=2 * threads
        )
        result["dask"] = {
            "scheduler": dask,
            "partitions": result.pop("partitions"),
            "rows_by_worker": result.pop("rows_by_worker"),
        }
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
