"""Log a training run to MLflow: parameters, metrics, plots, the pyfunc model, lineage tags."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from registry.model import DetectorModel

INPUT_EXAMPLE_ROWS = 5


def code_version() -> str:
    """Package version plus the git commit of the code, when it runs from a checkout."""
    try:
        version = metadata.version("pynomaly")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def ensure_experiment(name: str, tracking_uri: str, artifact_root: str) -> str:
    """Experiment id, creating it with artifacts under `<artifact_root>/mlflow` if missing.

    With a tracking server (http URI) the server decides where artifacts go (it may proxy
    them with --serve-artifacts), so no location is forced then.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not tracking_uri.startswith(("http://", "https://", "databricks")):
        location = f"{artifact_root.rstrip('/')}/mlflow"
        if not location.startswith("s3://"):
            location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class LoggedModel:
    """Where a training run and its model ended up."""

    run_id: str
    model_uri: str
    experiment_id: str


def log_training(
    *,
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    model: DetectorModel,
    features: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    figures: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> LoggedModel:
    """One MLflow run holding everything needed to trust and trace the model."""
    import matplotlib.pyplot as plt
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    example = features.head(INPUT_EXAMPLE_ROWS)
    signature = infer_signature(example, model.predict(None, example))
    # MLflow refuses to resume a run of another experiment than the process's active one.
    mlflow.set_experiment(experiment_id=experiment_id)
    resume = {"run_id": parent_run_id} if parent_run_id else {}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=tags, **resume
    ) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}")
            plt.close(fig)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            input_example=example,
        )
    return LoggedModel(
        run_id=run.info.run_id, model_uri=info.model_uri, experiment_id=experiment_id
    )


def start_run(tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """Open a run that child runs (tuning trials) can hang under; log_training resumes it."""
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Close a run opened by start_run that will not be resumed (e.g. training failed)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def trial_logger(tracking_uri: str, experiment_id: str, parent_run_id: str) -> Any:
    """A callback logging each tuning trial (a dict) as an MLflow child run."""
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(tracking_uri)

    def log_trial(trial: dict[str, Any]) -> None:
        run = mlflow_client.create_run(
            experiment_id,
            run_name=f"trial-{trial.get('number', '?')}",
            tags={"mlflow.parentRunId": parent_run_id, "pynomaly.kind": "tuning-trial"},
        )
        for key, value in trial.items():
            if isinstance(value, int | float) and key != "number":
                mlflow_client.log_metric(run.info.run_id, key, float(value))
            else:
                mlflow_client.log_param(run.info.run_id, key, str(value)[:500])
        mlflow_client.set_terminated(run.info.run_id)

    return log_trial
