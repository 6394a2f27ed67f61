"""Flow: ingest and validate training data, tune/fit a detector, log and register it."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pynomaly.settings import get_settings
from tasks.steps import (
    check_training_data,
    fit_detector,
    load_source,
    load_training_rows,
    register_model,
    validate_batch,
)
from tasks.store import ArtifactStore


def check_trial_workers(dask: str | None) -> str | None:
    """The Optuna storage AutoML's workers share, after checking `dask` answers: the configured
    one, or (with Dask and no server storage) a journal file on this machine."""
    from tasks.scaleout import check_dask, check_reachable

    settings = get_settings()
    storage = settings.optuna_storage
    if check_dask(dask) is None:
        return storage
    if dask != "local":
        check_reachable(dask)
    if storage is None or storage.startswith("sqlite"):
        folder = (settings.home_dir / "optuna").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        storage = str(folder / "trials.journal")
    return storage


@flow(name="train-detector", log_prints=True)
def train_detector(
    source: str,
    model: str,
    dataset: str | None = None,
    label_column: str | None = None,
    detector: str = "iforest",
    contamination: float | None = None,
    query: str | None = None,
    delimiter: str = ",",
    time_budget_s: float = 60.0,
    n_trials: int | None = None,
    n_workers: int = 1,
    random_state: int = 0,
    dask: str | None = None,
) -> dict[str, Any]:
    """Train a detector on a source and register it: champion if first, challenger otherwise.

    `dask` (a scheduler address or 'local'): AutoML's trials run on Dask workers sharing one
    Optuna study (PYNOMALY_OPTUNA_STORAGE, or a journal file under the home folder).
    """
    import mlflow

    from registry.promotion import abandon_train, repair_model
    from registry.repair import mark_complete
    from registry.tracking import ensure_experiment, start_run, trial_logger
    from registry.versions import client
    from tasks.ingest import check_dataset_name
    from tasks.train import (
        SAMPLE_TAG,
        check_contamination,
        check_detector,
        training_report,
        training_tags,
    )

    check_contamination(contamination)
    check_detector(detector)
    optuna_storage = check_trial_workers(dask)
    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    uri = settings.mlflow_tracking_uri
    dataset = check_dataset_name(dataset or model)

    # Ingest, and refuse data nothing can be learnt from before a suite, run or version exists
    manifest = load_source(source, dataset, store, query, delimiter, settings.chunk_rows)
    rows = load_training_rows(
        store, manifest, label_column, settings.train_max_rows, settings.chunk_rows
    )
    check_training_data(rows, label_column, manifest.source)

    # Validate
    report = validate_batch(
        store, manifest, optional_columns=[label_column] if label_column else []
    )

    # Repair what a killed train left (runs still RUNNING, versions that never finished), then
    # open one MLflow run; tuning trials become its child runs. MLflow's model logging
    # (start_run, pyfunc.log_model) only takes the process-wide URI: set here, at the edge.
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(settings.experiment, uri, settings.artifact_store)
    repair_model(client(uri), uri, model, settings.home_dir, experiment_id, settings.prefect_server)
    tags = training_tags(
        dataset, manifest, report, detector, label_column, random_state, settings.train_max_rows
    )
    run_id = start_run(uri, experiment_id, f"train-{model}", tags)
    # A failure from here on ends the run and takes back a version it registered, so a failed
    # train never leaves a half-registered version (a kill -9 is repaired by the next command).
    try:
        # Tune / train
        result = fit_detector(
            rows,
            manifest.source,
            label_column=label_column,
            detector=detector,
            contamination=contamination,
            random_state=random_state,
            time_budget_s=time_budget_s,
            n_trials=n_trials,
            n_workers=n_workers,
            dask=dask,
            optuna_storage=optuna_storage,
            trial_callback=trial_logger(uri, experiment_id, run_id) if detector == "auto" else None,
        )

        # Register, then gate a challenger against the champion (a first version is champion)
        tags |= {"threshold": repr(result.threshold)}
        tags |= {"contamination": repr(result.metrics["contamination"])}
        params = {"label_column": label_column, "dataset": dataset, "rows": manifest.rows}
        registered = register_model(uri, experiment_id, run_id, model, result, params, tags)
        registered["gate"] = {"decision": "promote", "reasons": ["ok: first version of the model"]}
        if registered["alias"] == "challenger":
            from flows.evaluate_model import evaluate_model

            registered["gate"] = evaluate_model(
                model, registered["version"], label_column=label_column
            )
            registered["alias"] = "champion" if registered["gate"]["promoted"] else "challenger"
        mark_complete(client(uri), model, registered["version"])
    except BaseException as exc:
        why = f"its train failed ({type(exc).__name__})"
        abandon_train(uri, model, run_id, settings.home_dir, why, settings.prefect_server)
        raise

    # Report
    summary, markdown, board = training_report(
        model, registered, result, dataset, manifest, report, int(tags.get(SAMPLE_TAG, 0))
    )
    if board is not None:
        create_table_artifact(key="automl-leaderboard", table=board)
    create_markdown_artifact(key="train-summary", markdown=markdown)
    return summary
