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
    register_model,
    validate_batch,
)
from tasks.store import ArtifactStore


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
) -> dict[str, Any]:
    """Train a detector on a source and register it: champion if first, challenger otherwise."""
    import mlflow

    from registry.promotion import discard_unfinished, repair_model
    from registry.repair import mark_complete
    from registry.tracking import (
        OWNER_TAG,
        code_version,
        end_run,
        ensure_experiment,
        owner,
        start_run,
        trial_logger,
    )
    from registry.versions import client
    from tasks.ingest import check_dataset_name
    from tasks.train import check_contamination, check_detector

    check_contamination(contamination)
    check_detector(detector)
    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    dataset = check_dataset_name(dataset or model)

    # Ingest, and refuse data nothing can be learnt from before a suite, run or version exists
    manifest = load_source(source, dataset, store, query, delimiter, settings.chunk_rows)
    check_training_data(store, manifest, label_column)

    # Validate
    optional = [label_column] if label_column else []
    report = validate_batch(store, manifest, optional_columns=optional)

    # Tune / train: one MLflow run; tuning trials become its child runs
    tags = {
        "dataset": dataset,
        "dataset_sha256": manifest.sha256,
        "dataset_rows": str(manifest.rows),
        "snapshot_uri": manifest.snapshot_uri,
        "source": manifest.source,
        "validation": "suite created" if report.suite_created else "passed",
        "code_version": code_version(),
        "detector": detector,
        "label_column": label_column or "",
        # This process, on the run and the version until the version is marked complete: the
        # next command tells a version a killed train left from one still being trained.
        OWNER_TAG: owner(),
    }
    uri = settings.mlflow_tracking_uri
    # MLflow's model logging (start_run, pyfunc.log_model) only takes the process-wide URI:
    # set here, at the flow's edge, and nowhere in the library.
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(settings.experiment, uri, settings.artifact_store)
    # Repair what a killed train left: runs still RUNNING, versions that never finished
    repair_model(client(uri), uri, model, settings.home_dir, experiment_id)
    run_id = start_run(uri, experiment_id, f"train-{model}", tags)
    # A failure from here on ends the run and takes back a version it registered, so a failed
    # train never leaves a half-registered version (a kill -9 is repaired by the next command).
    try:
        result = fit_detector(
            store,
            manifest,
            label_column=label_column,
            detector=detector,
            contamination=contamination,
            random_state=random_state,
            time_budget_s=time_budget_s,
            n_trials=n_trials,
            n_workers=n_workers,
            optuna_storage=settings.optuna_storage,
            trial_callback=(
                trial_logger(settings.mlflow_tracking_uri, experiment_id, run_id)
                if detector == "auto"
                else None
            ),
        )

        # Register, then gate a challenger against the champion (a first version is champion)
        tags["threshold"] = repr(result.threshold)
        tags["contamination"] = repr(result.metrics["contamination"])
        tags["random_state"] = str(random_state)  # the gate rebuilds the hold-out from it
        registered = register_model(
            uri,
            experiment_id,
            run_id,
            model,
            result,
            params={"label_column": label_column, "dataset": dataset, "rows": manifest.rows},
            tags=tags,
        )
        registered["gate"] = {"decision": "promote", "reasons": ["ok: first version of the model"]}
        if registered["alias"] == "challenger":
            from flows.evaluate_model import evaluate_model

            registered["gate"] = evaluate_model(
                model, registered["version"], label_column=label_column
            )
            registered["alias"] = "champion" if registered["gate"]["promoted"] else "challenger"
        mark_complete(client(uri), model, registered["version"])
    except BaseException as exc:
        try:
            end_run(uri, run_id, "FAILED")
            why = f"its train failed ({type(exc).__name__})"
            discard_unfinished(client(uri), uri, model, run_id, settings.home_dir, why)
        except Exception as cleanup:  # the next command repairs it; the first error counts
            print(f"could not clean up after the failed train of {model}: {cleanup!r}")
        raise

    metrics = {k: round(v, 6) for k, v in result.metrics.items()}
    summary = {
        **registered,
        "detector": result.detector,
        "config": result.params,
        "threshold": result.threshold,
        "metrics": metrics,
        "dataset": dataset,
        "dataset_sha256": manifest.sha256,
        "rows": manifest.rows,
        "validation": report.summary(),
    }
    if result.automl is not None:
        board = result.automl.leaderboard_.sort_values("value", ascending=False)
        # Pruned trials carry an intermediate value: rank finished trials only (label-free
        # selection fits nothing: its board is the meta-model's predicted ranking).
        finished = board[board["state"].isin(["COMPLETE", "PREDICTED"])]
        summary["leaderboard_top5"] = finished.head(5).to_dict("records")
        create_table_artifact(key="automl-leaderboard", table=board.astype(str).to_dict("records"))
    create_markdown_artifact(
        key="train-summary",
        markdown=(
            f"## Trained `{model}` v{registered['version']} ({registered['alias']})\n\n"
            f"detector `{result.detector}`, threshold {result.threshold:.6g}, dataset "
            f"`{dataset}` ({manifest.rows} rows, `{manifest.sha256[:12]}`)\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in metrics.items())
        ),
    )
    return summary
