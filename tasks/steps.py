"""Prefect task wrappers over this package's plain functions: names, retries on I/O, caching.

Only I/O is retried, and never bad input: a missing file stays missing on the second try.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from data_checks.suite import ValidationReport
from pynomaly.errors import InputError
from tasks import backup, drift, evaluate, scaleout, window
from tasks.ingest import (
    Manifest,
    check_source,
    load_manifest,
    sample_snapshot,
    snapshot_key,
    snapshot_source,
)
from tasks.store import ArtifactStore
from tasks.validate import validate_snapshot


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures only."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return False


IO = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_unless_bad_input}


@task(name="load_source", cache_policy=NO_CACHE, **IO)
def load_source(
    source: str,
    dataset: str,
    store: ArtifactStore,
    query: str | None = None,
    delimiter: str = ",",
    chunk_rows: int = 50_000,
) -> Manifest:
    """Read and check a source, snapshot it as Parquet under its content hash."""
    # Every flow reads its source here before it writes anything: a SQL URL with a password
    # passed to a flow directly (a UI run, `flow(source=...)`) is refused, not read. Prefect has
    # recorded it as a parameter by now; what is refused is using it (and so passing it on).
    check_source(source)
    return snapshot_source(
        source, dataset, store, query=query, chunk_rows=chunk_rows, delimiter=delimiter
    )


@task(name="load_stored_manifest", cache_policy=NO_CACHE, **IO)
def load_stored_manifest(store: ArtifactStore, dataset: str, sha256: str) -> Manifest:
    """The manifest of a stored snapshot (an InputError names it when it does not exist)."""
    if not store.exists(snapshot_key(dataset, sha256, "json")):
        raise InputError(f"dataset {dataset!r} has no snapshot {sha256!r}")
    return load_manifest(store, dataset, sha256)


@task(name="validate_batch", cache_policy=NO_CACHE)
def validate_batch(
    store: ArtifactStore,
    manifest: Manifest,
    suite_name: str | None = None,
    optional_columns: list[str] | None = None,
) -> ValidationReport:
    """Validate a snapshot with its dataset's expectation suite; quarantine it on failure."""
    # Read chunk by chunk from the snapshot: the batch is never held whole.
    return validate_snapshot(
        store, manifest, suite_name=suite_name, optional_columns=optional_columns
    )


@task(name="load_training_rows", cache_policy=NO_CACHE, **IO)
def load_training_rows(
    store: ArtifactStore,
    manifest: Manifest,
    label_column: str | None,
    max_rows: int,
    chunk_rows: int,
) -> Any:
    """The rows a model is trained on (a DataFrame): all of a snapshot's, or beyond `max_rows`
    a sample of them, read chunk by chunk and stratified by the label column (the same rows
    every time: the gate rebuilds the hold-out from them)."""
    return sample_snapshot(store, manifest, max_rows, chunk_rows, stratify=label_column)


@task(name="check_training_data", cache_policy=NO_CACHE)
def check_training_data(frame: Any, label_column: str | None, where: str) -> None:
    """Refuse rows no detector can learn from (too few rows, constant columns, overflow)."""
    from tasks.train import check_training_data as check_frame

    check_frame(frame, label_column, where)


@task(name="fit_detector", cache_policy=NO_CACHE)
def fit_detector(frame: Any, where: str, **options: Any) -> Any:
    """Fit preprocessing + detector on the training rows and measure it on the labelled
    hold-out."""
    from tasks.train import train_detector

    return train_detector(frame, where=where, **options)


@task(name="register_model", cache_policy=NO_CACHE)
def register_model(
    tracking_uri: str,
    experiment_id: str,
    run_id: str,
    model_name: str,
    result: Any,
    params: dict[str, Any],
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the model into the training run and register a version (not retried: not idempotent)."""
    from registry.model import DetectorModel
    from registry.tracking import log_training
    from registry.versions import client, register_version

    model = DetectorModel(result.estimator, result.threshold, list(result.features.columns))
    logged = log_training(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_name=f"train-{model_name}",
        model=model,
        features=result.features,
        params={"detector": result.detector, **result.params, **params},
        metrics=result.metrics,
        figures=result.figures,
        tags=tags,
        parent_run_id=run_id,
    )
    version, alias = register_version(
        client(tracking_uri), logged.model_uri, model_name, logged.run_id, tags
    )
    return {"model": model_name, "version": version, "alias": alias, "run_id": logged.run_id}


@task(name="resolve_model", cache_policy=NO_CACHE, **IO)
def resolve_model(
    tracking_uri: str, model_name: str, alias: str | None, version: int | None
) -> Any:
    """The registered version behind NAME@ALIAS or a version number (champion by default)."""
    from registry.versions import client, resolve_version

    return resolve_version(client(tracking_uri), model_name, alias, version)


@task(name="load_model_scorer", cache_policy=NO_CACHE, **IO)
def load_model_scorer(tracking_uri: str, resolved: Any) -> Any:
    """A registered version (platform-trained or logged by hand) as raw scores + threshold."""
    from registry.gate import load_scorer

    return load_scorer(resolved.uri, tracking_uri, resolved.tags)


def plain_task(fn: Any, **options: Any) -> Any:
    """A task straight over a plain function, named after it."""
    return task(name=fn.__name__, cache_policy=NO_CACHE, **options)(fn)


# Drift, evaluation and the retraining window
compare_with_training_data = plain_task(drift.compare_with_training_data)
log_drift_run = plain_task(drift.log_drift_run, **IO)
load_evaluation_data = plain_task(evaluate.load_evaluation_data)
gate_version = plain_task(evaluate.gate_version)
promote_version = plain_task(evaluate.promote_version)
find_new_batches = plain_task(window.find_new_batches)
combine_window = plain_task(window.combine_window)


@task(name="check_batch_schema", cache_policy=NO_CACHE)
def check_batch_schema(manifest: Manifest, resolved: Any, scorer: Any) -> list[str]:
    """The model's input columns, after checking the batch against the model's signature."""
    from tasks.score import check_batch_columns

    label = resolved.tags.get("label_column")
    return check_batch_columns(manifest, scorer.input_types, ignore=[label] if label else [])


@task(name="score_into_results", cache_policy=NO_CACHE, **IO)
def score_into_results(
    store: ArtifactStore,
    manifest: Manifest,
    resolved: Any,
    scorer: Any,
    columns: list[str],
    results_url: str,
    batch_id: str,
    chunk_rows: int,
) -> dict[str, Any]:
    """Score a snapshot with one model version into detection_results, replacing that version's
    rows of the batch (other models' and versions' rows of it stay)."""
    from tasks.results import store_scores
    from tasks.score import score_snapshot

    chunks = score_snapshot(scorer, store, manifest, columns, chunk_rows)
    return store_scores(results_url, batch_id, chunks, resolved)


@task(name="record_batch_snapshot", cache_policy=NO_CACHE, **IO)
def record_batch_snapshot(results_url: str, manifest: Manifest, scored: dict[str, Any]) -> None:
    """Remember the snapshot a batch id was scored from (feedback joins its rows back to it)."""
    from tasks.feedback import feedback_engine, record_batch_snapshot

    engine = feedback_engine(results_url)
    try:
        record_batch_snapshot(
            engine,
            scored["batch_id"],
            model_name=scored["model"],
            model_version=scored["version"],
            dataset=manifest.dataset,
            sha256=manifest.sha256,
            rows=manifest.rows,
        )
    finally:
        engine.dispose()


@task(name="load_feedback_rows", cache_policy=NO_CACHE, **IO)
def load_feedback_rows(
    results_url: str,
    store: ArtifactStore,
    model: str,
    trained_on: list[str],
    ignore: list[str],
    chunk_rows: int,
) -> Any:
    """Analyst-labelled rows of the model's batches with their features (None: no feedback)."""
    from tasks.feedback import feedback_engine, gate_feedback, results_db_exists

    if not results_db_exists(results_url):
        return None
    engine = feedback_engine(results_url)
    try:
        return gate_feedback(engine, store, model, trained_on, ignore, chunk_rows)
    finally:
        engine.dispose()


@task(name="load_feedback_labels", cache_policy=NO_CACHE, **IO)
def load_feedback_labels(results_url: str, store: ArtifactStore, model: str) -> Any:
    """The model's newest label per scored row with the snapshot holding the row (a frame)."""
    from tasks.feedback import feedback_engine, model_feedback, results_db_exists

    if not results_db_exists(results_url):
        return None
    engine = feedback_engine(results_url)
    try:
        return model_feedback(engine, store, model)
    finally:
        engine.dispose()


# Backups ---------------------------------------------------------------------------------------

create_backup = plain_task(backup.create_backup)
prune_backups = plain_task(backup.prune_backups, retries=2, retry_delay_seconds=5)
drill_restore = plain_task(backup.drill_restore)


# Scale-out on Dask: a partition of a batch scored on a worker
score_partition = plain_task(scaleout.score_partition)


def dask_task_runner(dask: str, n_workers: int | None = None) -> Any:
    """prefect-dask's DaskTaskRunner on the scheduler at `dask`, or on a new LocalCluster of
    one-thread worker processes for 'local'."""
    from prefect_dask import DaskTaskRunner

    if dask == scaleout.LOCAL:
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs=scaleout.local_cluster_kwargs(n_workers),
        )
    return DaskTaskRunner(address=dask)
